#!/bin/bash
# Device-side driver used during development: build the bench, check,
# time, torch SDPA, sanitizers, a short ncu. Expects the kernel files and
# the bench files flat in the current directory's .device-attn/ (copied
# there from wdmoe-cuda/kernels and wdmoe-cuda/bench), $OUT for results.
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/attn_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm --format=csv | tee "$OUT/gpu.txt"
nvcc -O3 -std=c++17 -lineinfo --use_fast_math -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -I. \
    -o attn_bench attn_prefill_bench.cu > "$OUT/ptxas.txt" 2>&1 || { tail -50 "$OUT/ptxas.txt"; exit 1; }
grep -A3 "Compiling entry function" "$OUT/ptxas.txt" | grep -E "entry|registers|spill" | grep -A2 "attn_\(var\|prefill\)" | sed -e 's/ptxas info    : //' -e 's/Compiling entry function//' -e 's/bytes //g'
timeout 60 ./attn_bench check > "$OUT/check.txt" 2>&1; echo "check rc=$?"; grep -E "FAIL|failure" "$OUT/check.txt"
timeout 40 ./attn_bench time > "$OUT/time.txt" 2>&1; echo "time rc=$?"; cat "$OUT/time.txt"
timeout 40 python3 attn_sdpa.py > "$OUT/sdpa.txt" 2>&1; echo "sdpa rc=$?"; cat "$OUT/sdpa.txt"
for t in racecheck memcheck synccheck; do
  echo "== $t" >> "$OUT/sanitizers.txt"
  timeout 25 compute-sanitizer --tool $t ./attn_bench small > /tmp/san.txt 2>&1; echo "$t rc=$?" | tee -a "$OUT/sanitizers.txt"
  head -c 20000 /tmp/san.txt >> "$OUT/sanitizers.txt"; tail -3 /tmp/san.txt
done
if [ -n "$NCU" ]; then
  timeout 40 ncu --clock-control none -k regex:"attn_prefill_h128|attn_ws" \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section SchedulerStats \
    ./attn_bench prof > "$OUT/ncu.txt" 2>&1; echo "ncu rc=$?"
  grep -E "attn|Duration|Throughput|Achieved Occupancy|Stall|Registers|Theoretical Occ" "$OUT/ncu.txt" | head -60
fi
