#!/usr/bin/env bash
# The GPU MoE step after issue 13 (typed launches, the moe module, the
# latency-table fix), on the GPU machine, from the repo root after
# wdmoe-cuda/gpu-build.sh (copied to .device/moe.sh). Under 7 minutes:
#  1. nvidia-smi;
#  2. the wdmoe-cuda GPU tests (--include-ignored; incl. the new
#     two_planned_steps_without_sync_keep_their_own_latencies), then
#     gpu_route_tests (device routing at prefill sizes);
#  3. the wdmoe-sim cuda lib tests (--include-ignored), timing tests skipped
#     here (they run in 4);
#  4. in one call: torch_baseline.py (copy rate, expert FFN 1/16 tokens, HF
#     block and naive loop at 1, 16, 512, 4096 tokens), then the layer-step
#     timings (gpu_layer_mixtral_step_timing: 1..16 tokens;
#     gpu_layer_prefill_step_timing: 512, 4096 tokens, host- and
#     device-routed);
#  5. compute-sanitizer memcheck on the layer tests (device vs host policy,
#     GPU vs CPU layer), then on the device-routing tests.
# Worst case (every step at its timeout) 680 s: run it with a 600 s limit
# only when the earlier steps are known to pass quickly (typical < 6 min).
# Logs under $OUT (or ./gpu-out): moe.log (everything), gpu_tests.log,
# gpu_route_tests.log, sim_tests.log, torch.json, timing.log, memcheck.log,
# memcheck_route.log.
#   bash .device/moe.sh
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-$PWD/../gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
exec > >(tee "$out/moe.log") 2>&1
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
step "GPU tests: wdmoe-cuda (kernels, two planned steps without a sync)"
timeout 100 ./gpu_tests --include-ignored --test-threads 1 --nocapture > "$out/gpu_tests.log" 2>&1
echo "exit $?"
grep -E "^test |two steps without sync|test result|panicked|FAILED" "$out/gpu_tests.log"
step "GPU tests: device routing at prefill sizes (counting sort, device-offset GEMMs, device- vs host-routed step, forced mismatch)"
timeout 120 ./gpu_route_tests --include-ignored --test-threads 1 --nocapture > "$out/gpu_route_tests.log" 2>&1
echo "exit $?"
grep -E "^test |sort case|device offsets|tokens: .* rows|forced mismatch|test result|panicked|FAILED" "$out/gpu_route_tests.log"
step "GPU tests: wdmoe-sim cuda lib tests (timing tests skipped here)"
timeout 70 ./sim_tests --include-ignored --test-threads 1 --nocapture --skip step_timing > "$out/sim_tests.log" 2>&1
echo "exit $?"
grep -E "^test |cases agree|rel err|mismatch|test result|panicked|FAILED" "$out/sim_tests.log"
step "PyTorch baseline (same call as the layer timings below)"
timeout 90 python3 torch_baseline.py --tokens 1,16 --layer-tokens 1,16,512,4096 --json "$out/torch.json"
step "layer-step timings: 1-16 tokens (decode, host and device policy), 512 and 4096 (grouped prefill, host- and device-routed)"
timeout 60 ./sim_tests --include-ignored --test-threads 1 --nocapture step_timing > "$out/timing.log" 2>&1
echo "exit $?"
grep -E "LAYER|stamps|test result|panicked" "$out/timing.log"
step "compute-sanitizer memcheck: layer tests (device vs host policy, GPU vs CPU layer)"
timeout 90 compute-sanitizer --tool memcheck --leak-check no ./sim_tests --include-ignored --test-threads 1 gpu_layer_device_policy_matches_host_policy gpu_layer_matches_cpu_layer > "$out/memcheck.log" 2>&1
echo "exit $?"
grep -E "ERROR SUMMARY|test result|panicked" "$out/memcheck.log"
step "compute-sanitizer memcheck: device routing (counting sort + gather, forced mismatch re-run)"
timeout 150 compute-sanitizer --tool memcheck --leak-check no ./gpu_route_tests --include-ignored --test-threads 1 counting_sort_matches_cpu_reference forced_mismatch_is_rerun_with_wdmoe_cores_plan > "$out/memcheck_route.log" 2>&1
echo "exit $?"
grep -E "ERROR SUMMARY|test result|panicked" "$out/memcheck_route.log"
step "done"
