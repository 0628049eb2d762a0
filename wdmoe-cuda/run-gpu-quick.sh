#!/usr/bin/env bash
# Lighter GPU run (a few device minutes): the PyTorch baseline at 1 and 16
# tokens, decode_bench --quick (whole-FFN A/B of the 9-16-token shapes, no
# sweep), the GPU tests with --include-ignored and the GPU layer tests.
# wdmoe-cuda/gpu-build.sh copies it to .device/quick.sh; run from the repo root:
#   bash .device/quick.sh [TOKENS]      # TOKENS for decode_bench, default 16,12,1
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-$PWD/../gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
exec > >(tee "$out/quick.log") 2>&1
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
step "PyTorch baseline"
timeout 120 python3 torch_baseline.py --tokens 1,16 --layer-tokens 1 --json "$out/torch.json"
step "decode_bench --quick"
timeout 120 ./decode_bench --quick --tokens "${1:-16,12,1}" --iters 40 --json "$out/decode.json"
step "GPU tests: wdmoe-cuda"
timeout 150 ./gpu_tests --include-ignored --test-threads 1 --nocapture > "$out/tests.log" 2>&1
grep -E "^test |seed|test result|panicked|error" "$out/tests.log"
grep -E "rel err" "$out/tests.log" | awk '{for(i=1;i<=NF;i++) if($i=="err") print $(i+1)}' | sort -g | tail -1 | sed 's/^/max rel err (ffn tests): /'
step "GPU tests: wdmoe-sim layer"
timeout 90 ./sim_tests --include-ignored --test-threads 1 --nocapture layer:: 2>&1 | tee -a "$out/tests.log" | grep -E "^test |rel err|LAYER|test result|panicked|error"
step "PyTorch baseline again (drift check)"
timeout 60 python3 torch_baseline.py --tokens 16 --layer-tokens 1 | grep "expert FFN"
step "done"
