#!/usr/bin/env bash
# Device-side routing at prefill sizes (issue 13), on the GPU machine, from
# the repo root after wdmoe-cuda/gpu-build.sh (copied to .device/route.sh).
# Worst case (every step at its timeout) 610 s; typically a few minutes:
#  1. nvidia-smi;
#  2. gpu_route_tests (--include-ignored): counting sort + gather vs a CPU
#     reference, grouped GEMMs on device row offsets vs host counts,
#     device-routed vs host-routed layer step (17/512/1000/4096 tokens,
#     top-2 and WDMoE θ = 0.2), forced mismatch re-run;
#  3. regression: the wdmoe-cuda GPU tests (router_policy now calls the
#     shared token_policy; the grouped GEMM's schedule moved to shared memory);
#  4. wdmoe-sim tests: the policy port vs wdmoe-core (policy.cuh), GPU vs
#     CPU layer (with the device-routed step above 16 tokens), device vs
#     host policy (decode);
#  5. in one call: torch_baseline.py (HF block at 512 and 4096 tokens), then
#     gpu_layer_prefill_step_timing (host- and device-routed at 512, 4096);
#  6. compute-sanitizer memcheck on the sort and the forced re-run.
# Logs under $OUT (or ./gpu-out): route.log (everything) and one per step.
#   bash .device/route.sh
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-$PWD/../gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
exec > >(tee "$out/route.log") 2>&1
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
step "device routing tests (gpu_route_tests)"
timeout 110 ./gpu_route_tests --include-ignored --test-threads 1 --nocapture > "$out/gpu_route_tests.log" 2>&1
echo "exit $?"
grep -E "^test |sort case|device offsets|tokens: .* rows|forced mismatch|test result|panicked|FAILED" "$out/gpu_route_tests.log"
step "regression: wdmoe-cuda GPU tests"
timeout 100 ./gpu_tests --include-ignored --test-threads 1 --nocapture > "$out/gpu_tests.log" 2>&1
echo "exit $?"
grep -E "^test |test result|panicked|FAILED" "$out/gpu_tests.log"
step "wdmoe-sim tests (policy port vs wdmoe-core, GPU vs CPU layer incl. device-routed, device vs host policy)"
timeout 120 ./sim_tests --include-ignored --test-threads 1 --nocapture gpu_layer_matches_cpu_layer gpu_layer_device_policy_matches_host_policy device_policy_port_matches_wdmoe_core > "$out/sim_tests.log" 2>&1
echo "exit $?"
grep -E "^test |device-routed vs host-routed|mismatch|test result|panicked|FAILED" "$out/sim_tests.log"
step "PyTorch baseline (HF block, 512 and 4096 tokens), then the layer step at 512 and 4096 (host- and device-routed)"
timeout 90 python3 torch_baseline.py --tokens 1 --layer-tokens 512,4096 --json "$out/torch.json"
timeout 60 ./sim_tests --include-ignored --test-threads 1 --nocapture gpu_layer_prefill_step_timing > "$out/timing.log" 2>&1
echo "exit $?"
grep -E "LAYER|test result|panicked" "$out/timing.log"
step "compute-sanitizer memcheck: counting sort + gather, forced mismatch re-run"
timeout 120 compute-sanitizer --tool memcheck --leak-check no ./gpu_route_tests --include-ignored --test-threads 1 counting_sort_matches_cpu_reference forced_mismatch_is_rerun_with_wdmoe_cores_plan > "$out/memcheck_route.log" 2>&1
echo "exit $?"
grep -E "ERROR SUMMARY|test result|panicked" "$out/memcheck_route.log"
step "done"
