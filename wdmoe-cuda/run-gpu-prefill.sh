#!/usr/bin/env bash
# Prefill (tensor-core) run on the GPU machine, from the repo root after
# wdmoe-cuda/gpu-build.sh (copied to .device/prefill.sh): the PyTorch baseline
# at prefill sizes and prefill_bench in the same call on the same card, the
# prefill GPU tests, memcheck on the small ones, HGMMA in the SASS, and ncu
# on the gate/up GEMM at 4096 tokens. Logs under $OUT (or ./gpu-out).
#   bash .device/prefill.sh [--sweep]   (order: tests, baseline, ours, baseline again,
#   layer, then the warm sweep, so the card's warm-up biases no comparison)
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-$PWD/../gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
exec > >(tee "$out/prefill.log") 2>&1
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
step "GPU tests: prefill"
timeout 120 ./gpu_tests --include-ignored --test-threads 1 --nocapture prefill grouped expert_ffn > "$out/tests-prefill.log" 2>&1
grep -E "^test |test result|panicked|error" "$out/tests-prefill.log"
grep -E "rel err" "$out/tests-prefill.log" | awk '{for(i=1;i<=NF;i++) if($i=="err") print $(i+1)}' | sort -g | tail -1 | sed 's/^/max rel err (prefill tests): /'
step "GPU tests: wdmoe-sim layer (decode and grouped prefill paths)"
timeout 120 ./sim_tests --include-ignored --test-threads 1 --nocapture layer::gpu::tests::gpu_layer_matches 2>&1 | tee -a "$out/tests-prefill.log" | grep -E "^test |rel err|test result|panicked|error"
step "PyTorch baseline (prefill sizes)"
timeout 200 python3 torch_baseline.py --tokens ${TOKENS:-16,32,64,128,256,512,1024,4096,8192} --layer-tokens ${LAYER:-512,4096} --json "$out/torch-prefill.json"
step "prefill_bench"
timeout 240 ./prefill_bench --tokens ${TOKENS:-16,32,64,128,256,512,1024,4096,8192} --layer ${LAYER:-512,4096} --json "$out/prefill.json"
step "PyTorch baseline again (drift: the card warms up; compare both)"
timeout 200 python3 torch_baseline.py --tokens 1024,4096,8192 --layer-tokens ${LAYER:-512,4096} --json "$out/torch-prefill-2.json" | grep -E "expert FFN|MoE layer"
step "wdmoe-sim GPU layer, grouped prefill path (Mixtral size, 512 / 4096 tokens, wdmoe-core policy)"
timeout 120 ./sim_tests --include-ignored --test-threads 1 --nocapture gpu_layer_prefill_step_timing 2>&1 | grep -E "LAYER|test result|panicked"
if [ "${1:-}" = "--sweep" ]; then
  step "prefill_bench --sweep (shapes per token count; runs warm, after the rest)"
  timeout 300 ./prefill_bench --tokens ${TOKENS:-16,32,64,128,256,512,1024,4096,8192} --layer "" --sweep --iters 10 | grep -E "sweep|tokens"
fi
step "SASS: tensor-core instructions in the prefill GEMMs"
cuobjdump --dump-sass ffn_prefill.sm_90a.cubin | awk '/Function : /{f=$3} {for(i=1;i<=NF;i++) if ($i ~ /^H(G)?MMA/) c[f" "$i]++} END{for(k in c) print c[k], k}' | sort -k2
step "compute-sanitizer memcheck (small prefill tests)"
timeout 120 compute-sanitizer --tool memcheck --leak-check no ./gpu_tests --include-ignored --test-threads 1 ragged grouped prefill_bad > "$out/prof-prefill.log" 2>&1
grep -E "ERROR SUMMARY|test result" "$out/prof-prefill.log"
step "ncu: gate/up GEMM at 4096 tokens"
timeout 120 ncu --clock-control none --kernel-name regex:gemm_swiglu --launch-skip 200 --launch-count 1 --section SpeedOfLight ./prefill_bench --tokens 4096 --layer "" --iters 1 >> "$out/prof-prefill.log" 2>&1
grep -E "gemm_|SM Frequency|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput" "$out/prof-prefill.log" | tail -8
step "done"
