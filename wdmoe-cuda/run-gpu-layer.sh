#!/usr/bin/env bash
# The MoE layer step on the GPU (a few device minutes): the PyTorch
# baseline's copy rate and layer timings (HF block, naive loop) at 1 and 16
# tokens, the wdmoe-sim GPU layer tests (device policy vs wdmoe-core,
# device vs host policy, CPU reference, step timing), the wdmoe-cuda kernel
# tests, compute-sanitizer
# memcheck on the device-policy tests, the PyTorch baseline again.
# wdmoe-cuda/gpu-build.sh copies it to .device/layer.sh; run from the repo root:
#   bash .device/layer.sh
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-$PWD/../gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
exec > >(tee "$out/layer.log") 2>&1
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
step "PyTorch baseline"
timeout 120 python3 torch_baseline.py --tokens 1 --layer-tokens 1,16 --json "$out/torch.json"
step "GPU tests: wdmoe-sim layer"
timeout 240 ./sim_tests --include-ignored --test-threads 1 --nocapture layer:: 2>&1 | tee "$out/sim_tests.log" | grep -E "^test |seed|cases agree|rel err|LAYER|test result|panicked|error"
step "GPU tests: wdmoe-cuda kernels"
timeout 200 ./gpu_tests --include-ignored --test-threads 1 > "$out/gpu_tests.log" 2>&1
grep -E "test result|panicked|FAILED" "$out/gpu_tests.log"
step "compute-sanitizer memcheck: device policy"
timeout 240 compute-sanitizer --tool memcheck --leak-check no ./sim_tests --include-ignored --test-threads 1 device_policy 2>&1 | tail -6
step "PyTorch baseline again (drift check)"
timeout 60 python3 torch_baseline.py --tokens 1 --layer-tokens 1 | grep -E "copy|expert FFN|layer"
step "done"
