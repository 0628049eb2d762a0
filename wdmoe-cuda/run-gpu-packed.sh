#!/usr/bin/env bash
# The packed-weights grouped GEMM (kernels/gemm_packed.cuh): correctness
# against the f64 reference (tests/gpu_packed.rs), compute-sanitizer memcheck
# on the small cases, and the Mixtral-size timing against the stacked-layout
# grouped GEMM and the weight-read floor. From the repo root after
# wdmoe-cuda/gpu-build.sh (copied to .device/packed.sh):
#   bash .device/packed.sh
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-$PWD/../gpu-out}
mkdir -p "$out"
export RUST_BACKTRACE=1
exec > >(tee "$out/packed.log") 2>&1
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x ./gpu_packed_tests 2>/dev/null
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
step "correctness (tests/gpu_packed.rs)"
timeout 300 ./gpu_packed_tests --include-ignored --test-threads 1 --nocapture --skip timing 2>&1 | grep -vE "^\s+expert [0-9]+:" | tail -60
echo "exit $?"
step "compute-sanitizer memcheck (small cases)"
if command -v compute-sanitizer >/dev/null; then
  timeout 300 compute-sanitizer --tool memcheck --print-limit 5 ./gpu_packed_tests --include-ignored --test-threads 1 packed_ffn_matches_reference 2>&1 | grep -E "ERROR SUMMARY|test result|Invalid|panicked" | head
fi
step "timing per launch and tile width (Mixtral size)"
timeout 200 ./gpu_packed_tests --include-ignored --test-threads 1 --nocapture packed_stage_timing_mixtral 2>&1 | grep -E "STAGE|test result|panicked"
step "timing (Mixtral size)"
timeout 200 ./gpu_packed_tests --include-ignored --test-threads 1 --nocapture packed_ffn_timing_mixtral 2>&1 | grep -E "PACKED|test result|panicked"
