#!/usr/bin/env bash
# Run on the GPU machine from the repo root after wdmoe-cuda/gpu-build.sh (which
# copies this file to .device/run.sh). The PyTorch baseline and our kernels
# run in the same call on the same card. Writes 6 files to $OUT (or
# ./gpu-out): run.log (everything), torch.json, decode.json, sweep.log,
# tests.log, bench.log, prof.log (memcheck + ncu).
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-$PWD/../gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
exec > >(tee "$out/run.log") 2>&1
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
step "PyTorch baseline"
timeout 150 python3 torch_baseline.py --tokens 1,2,4,8,16 --layer-tokens 1,16 --json "$out/torch.json"
step "decode_bench"
timeout 100 ./decode_bench --json "$out/decode.json" --sweep "$out/sweep.log"
step "GPU tests: wdmoe-cuda"
timeout 150 ./gpu_tests --include-ignored --test-threads 1 --nocapture > "$out/tests.log" 2>&1
grep -E "^test |seed|test result|panicked|error" "$out/tests.log"
grep -E "rel err" "$out/tests.log" | awk '{for(i=1;i<=NF;i++) if($i=="err") print $(i+1)}' | sort -g | tail -1 | sed 's/^/max rel err (ffn tests): /'
step "GPU tests: wdmoe-sim layer"
timeout 90 ./sim_tests --include-ignored --test-threads 1 --nocapture layer:: 2>&1 | tee -a "$out/tests.log" | grep -E "^test |rel err|LAYER|test result|panicked|error"
step "criterion benches"
timeout 80 ./kernels --bench > "$out/bench.log" 2>&1
grep -E "time:|thrpt:|^[a-z_0-9]+/|skipping" "$out/bench.log"
step "compute-sanitizer memcheck (small sizes)"
timeout 90 compute-sanitizer --tool memcheck --leak-check no ./gpu_tests --include-ignored --test-threads 1 odd_sizes combine router bad_inputs > "$out/prof.log" 2>&1
grep -E "ERROR SUMMARY|test result" "$out/prof.log"
step "ncu: first gate/up and down launches (T=16)"
for k in gemv_gated gemv_pair; do
  timeout 100 ncu --clock-control none --kernel-name regex:$k --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis ./decode_bench --tokens 16 --iters 3 >> "$out/prof.log" 2>&1
done
grep -E "  gemv_|DRAM Throughput|Duration|Mem Busy" "$out/prof.log" | head -12
step "done"
