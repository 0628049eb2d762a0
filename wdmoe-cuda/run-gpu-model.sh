#!/usr/bin/env bash
# The whole model on the GPU (issue 14), on the GPU machine, from the repo
# root after wdmoe-cuda/gpu-build.sh (copied to .device/model.sh; binaries
# may be gzipped). Under 9 minutes:
#  1. nvidia-smi;
#  2. the model kernels against f64 references (wdmoe-cuda lib tests);
#  3. the whole model against the CPU reference and HF (gpu_model);
#  4. the MoE step regression tests (wdmoe-cuda gpu tests, sim lib tests);
#  5. in one call: HF's MixtralForCausalLM (mixtral_model_baseline.py, full
#     size, random fp16 weights) then `wdmoe generate --device cuda
#     --random-weights` at the same size: θ = 0 and θ = 0.2 (default
#     scenario), 128-token prompt, 64 new tokens; prefill of 2,048 tokens;
#  6. compute-sanitizer memcheck and racecheck on the model tests.
# Logs under $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")"
root=$(cd .. && pwd)
export WDMOE_SIM_DIR="$root/wdmoe-sim"
out=${OUT:-$PWD/../gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x ./* 2>/dev/null
exec > >(tee "$out/model.log") 2>&1
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu,memory.total --format=csv
step "model kernels vs f64 references"
timeout 60 ./cuda_lib_tests --include-ignored --test-threads 1 model:: 2>&1 | grep -E "^test |test result|panicked|seed|diff" | head -40
step "whole model vs CPU reference and HF"
timeout 150 ./gpu_model --include-ignored --test-threads 1 --nocapture > "$out/gpu_model.log" 2>&1
echo "exit $?"
grep -E "^test |rel err|greedy|perplexity|test result|panicked" "$out/gpu_model.log"
step "MoE step regression (wdmoe-cuda gpu tests, sim lib tests)"
[ -x ./gpu_tests ] && { timeout 100 ./gpu_tests --include-ignored --test-threads 1 > "$out/gpu_tests.log" 2>&1; echo "exit $?"; grep -E "test result|panicked|FAILED" "$out/gpu_tests.log"; }
[ -x ./sim_tests ] && { timeout 70 ./sim_tests --include-ignored --test-threads 1 --skip step_timing > "$out/sim_tests.log" 2>&1; echo "exit $?"; grep -E "test result|panicked|FAILED" "$out/sim_tests.log"; }
step "HF MixtralForCausalLM, full size, random fp16 weights (same call as ours below)"
timeout 150 python3 mixtral_model_baseline.py --prompt 128 --new 32 --json "$out/hf_model.json"
step "wdmoe generate --device cuda --random-weights, full size, θ = 0 (top-2)"
timeout 90 ./wdmoe generate --device cuda --random-weights --model mixtral-8x7b --random-prompt 128 \
  --max-new-tokens 64 --theta 0 --latency-s 1,1,1,1,1,1,1,1 --json > "$out/ours_theta0.json"
echo "exit $?"; cat "$out/ours_theta0.json"
step "same, θ = 0.2 on the default scenario"
timeout 90 ./wdmoe generate --device cuda --random-weights --model mixtral-8x7b --random-prompt 128 \
  --max-new-tokens 64 --theta 0.2 --json > "$out/ours_theta02.json"
echo "exit $?"; cat "$out/ours_theta02.json"
step "prefill 2,048 tokens (experts in the decode packing only at full size)"
timeout 90 ./wdmoe generate --device cuda --random-weights --model mixtral-8x7b --random-prompt 2048 \
  --max-new-tokens 2 --theta 0 --latency-s 1,1,1,1,1,1,1,1 --json > "$out/ours_prefill2048.json"
echo "exit $?"; cat "$out/ours_prefill2048.json"
step "compute-sanitizer memcheck + racecheck"
timeout 120 compute-sanitizer --tool memcheck --leak-check no ./gpu_model --include-ignored --test-threads 1 gpu_odd_lengths gpu_kv_cache > "$out/memcheck.log" 2>&1
echo "exit $?"; grep -E "ERROR SUMMARY|test result|panicked" "$out/memcheck.log"
timeout 90 compute-sanitizer --tool racecheck ./cuda_lib_tests --include-ignored --test-threads 1 model::tests::attention model::tests::add_rmsnorm > "$out/racecheck.log" 2>&1
echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard|test result|panicked" "$out/racecheck.log" | head
step "done"
