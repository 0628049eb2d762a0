#!/usr/bin/env bash
# The whole model on the GPU (issue 14) and the device-routed MoE step
# (issue 13), on the GPU machine, from the repo root after
# wdmoe-cuda/gpu-build.sh (copied to .device/model.sh; binaries may be
# gzipped). Three modes, each under 9 minutes:
#   bash .device/model.sh check   # every GPU test + compute-sanitizer
#   bash .device/model.sh bench   # HF's whole model, then ours, same call
#   bash .device/model.sh decode  # short (~4 min): the model kernel tests,
#                                 # the device-planned step tests (when
#                                 # gpu_tests / sim_tests are there),
#                                 # ours (prefill 128 / 2,048, decode,
#                                 # θ = 0.2) beside HF's and cuBLAS, the
#                                 # whole-model tests, memcheck, racecheck
# check: the model kernels against f64 references (wdmoe-cuda lib tests);
#   (racecheck covers the packed GEMM through the q|k|v GEMM's RoPE test, in
#   model::tests::attention, and in check mode through the packed GEMM's
#   tests: every lane releases the weight stage it read, the ordering
#   racecheck models: kernels/hopper.cuh);
#   the whole model against the CPU reference and HF (gpu_model); the
#   device-routed step (gpu_route_tests); the MoE step regressions
#   (gpu_tests, sim lib tests); memcheck and racecheck.
# bench: torch_baseline.py (copy rate, cuBLAS GEMM rate, HF's MoE block at
#   512/4,096 tokens), mixtral_model_baseline.py (HF's MixtralForCausalLM,
#   full size, random fp16 weights: prefill 128 and 2,048, decode ms/token,
#   the weight-read floor at the copy rate of the call), then ours at the
#   same size (model_bench: prefill 128 and 2,048 with the experts and the
#   attention projections in the decode packing, decode; `wdmoe generate`
#   at θ = 0.2 on the default scenario), and the layer-step timings at
#   512/4,096 tokens (host- vs device-routed).
# Logs under $OUT (or ./gpu-out).
set -uo pipefail
mode=${1:-check}
cd "$(dirname "$0")"
root=$(cd .. && pwd)
export WDMOE_SIM_DIR="$root/wdmoe-sim"
out=${OUT:-$PWD/../gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
# wdmoe is built with feature dist (links libnccl.so.2): PyTorch's wheel has it.
nccl=${NCCL_LIBRARY_PATH:-$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null)}
export LD_LIBRARY_PATH="$nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
chmod +x ./* 2>/dev/null
exec > >(tee "$out/model-$mode.log") 2>&1
step() { printf '\n=== %s (%s) ===\n' "$1" "$(date -u +%H:%M:%S)"; }
# memcheck on the whole model; racecheck on the attention (with the packed
# q|k|v GEMM's RoPE epilogue), norm and argmax kernels and the whole model.
sanitizers() {
  step "compute-sanitizer memcheck + racecheck (model kernels, whole model)"
  timeout 100 compute-sanitizer --tool memcheck --leak-check no ./gpu_model --include-ignored --test-threads 1 gpu_odd_lengths gpu_kv_cache > "$out/memcheck.log" 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|test result|panicked" "$out/memcheck.log"
  timeout 120 compute-sanitizer --tool racecheck ./cuda_lib_tests --include-ignored --test-threads 1 model::tests::attention model::tests::add_rmsnorm model::tests::argmax > "$out/racecheck.log" 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard|test result|panicked" "$out/racecheck.log" | head
  timeout 300 compute-sanitizer --tool racecheck ./gpu_model --include-ignored --test-threads 1 gpu_odd_lengths gpu_kv_cache > "$out/racecheck-model.log" 2>&1
  echo "exit $?"; grep -E "RACECHECK SUMMARY|test result|panicked" "$out/racecheck-model.log" | head
}
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu,memory.total --format=csv
if [ "$mode" = decode ]; then
  step "model kernels vs f64 references; packed prefill and lm_head vs the GEMV path"
  timeout 90 ./cuda_lib_tests --include-ignored --test-threads 1 --nocapture model:: 2>&1 | grep -E "^test |test result|panicked|seed|diff|packed" | head -40
  if [ -x ./gpu_tests ]; then
    step "device-planned steps: latency tables polled by report, merged slot launches (tests/gpu.rs)"
    timeout 60 ./gpu_tests --include-ignored --test-threads 1 --nocapture planned merged_slot 2>&1 | grep -E "^test |test result|panicked|rel err|differ" | head -20
  fi
  if [ -x ./sim_tests ]; then
    step "GPU layer: device policy vs host policy, with and without step events (wdmoe-sim lib)"
    timeout 60 ./sim_tests --include-ignored --test-threads 1 device_policy 2>&1 | grep -E "^test |test result|panicked" | head -20
  fi
  step "ceilings: copy rate and cuBLAS GEMM (torch_baseline.py)"
  timeout 60 python3 torch_baseline.py --tokens 1 --layer-tokens 512 --json "$out/torch.json" 2>&1 | grep -Ei "copy|gemm|cublas|TFLOP" | head -8
  step "ours, full size: prefill 128 and 2,048, decode (default; checks after the token; MoE step events; slots one by one)"
  timeout 120 ./model_bench --prompts 128,2048 --iters 3 --decode 32 --json "$out/model_bench.json"; echo "exit $?"
  step "ours, decode with the gate/up slot kernels waiting for the plan (WDMOE_SLOT_SPEC=0, before Z13)"
  WDMOE_SLOT_SPEC=0 timeout 60 ./model_bench --prompts 128 --iters 1 --decode 32 2>&1 | grep -E "decode \(default\)"
  step "ours, decode with RoPE in its own kernel before attention (WDMOE_FUSED_ROPE=0, before run A1)"
  WDMOE_FUSED_ROPE=0 timeout 60 ./model_bench --prompts 128 --iters 1 --decode 32 2>&1 | grep -E "decode \(default\)"
  step "ours, decode with other launch shapes of the q|k|v and o GEMVs (WDMOE_PROJ_SHAPE=warps,unroll,splits; default 8,8,1 since run A3)"
  for s in 4,8,1 8,8,1 4,8,1; do
    printf '%s: ' "$s"; WDMOE_PROJ_SHAPE=$s timeout 60 ./model_bench --prompts 128 --iters 1 --decode 32 2>&1 | grep -E "decode \(default\)|Error|error"
  done
  step "ours, decode with other launch shapes of the experts' down kernel (WDMOE_DOWN_SHAPE=warps,unroll,warps_per_sm; default 8,4,8 since run A8)"
  for s in 8,8,8 8,4,8 8,8,8; do
    printf '%s: ' "$s"; WDMOE_DOWN_SHAPE=$s timeout 60 ./model_bench --prompts 128 --iters 1 --decode 32 2>&1 | grep -E "decode \(default\)|Error|error"
  done
  step "ours, decode with two key tiles per attention split (WDMOE_ATTN_SPLIT_KEYS=64)"
  WDMOE_ATTN_SPLIT_KEYS=64 timeout 60 ./model_bench --prompts 128 --iters 1 --decode 32 2>&1 | grep -E "decode \(default\)"
  step "ours, decode after a 4-token prompt (the attention's share: against the 128-token prompt above)"
  timeout 60 ./model_bench --prompts 128 --iters 1 --decode 32 --decode-prompt 4 2>&1 | grep -E "decode \(default\)"
  step "wdmoe generate --device cuda --random-weights, full size, θ = 0.2 on the default scenario"
  timeout 100 ./wdmoe generate --device cuda --random-weights --model mixtral-8x7b --random-prompt 128 --max-new-tokens 64 --theta 0.2; echo "exit $?"
  WDMOE_SLOT_SPEC=0 timeout 100 ./wdmoe generate --device cuda --random-weights --model mixtral-8x7b --random-prompt 128 --max-new-tokens 64 --theta 0.2 2>&1 | grep -E "GPU time|tokens/s"
  step "HF MixtralForCausalLM, full size, random fp16 weights: prefill 128 and 2,048, decode, the floor"
  timeout 150 python3 mixtral_model_baseline.py --prompt 128 --new 32 --prefill-extra 2048 --json "$out/hf_model.json"
  step "whole model vs CPU reference and HF"
  timeout 150 ./gpu_model --include-ignored --test-threads 1 --nocapture > "$out/gpu_model.log" 2>&1
  echo "exit $?"
  grep -E "^test |rel err|greedy|perplexity|test result|panicked" "$out/gpu_model.log"
  sanitizers
elif [ "$mode" = check ]; then
  step "model kernels vs f64 references; packed prefill vs the GEMV path"
  timeout 90 ./cuda_lib_tests --include-ignored --test-threads 1 --nocapture model:: 2>&1 | grep -E "^test |test result|panicked|seed|diff|packed prefill" | head -40
  step "packed-weights grouped GEMM (tests/gpu_packed.rs)"
  timeout 120 ./gpu_packed_tests --include-ignored --test-threads 1 --nocapture --skip timing > "$out/gpu_packed.log" 2>&1
  echo "exit $?"; grep -E "^test |test result|panicked|Mixtral size|device-routed true" "$out/gpu_packed.log" | head -30
  step "whole model vs CPU reference and HF"
  timeout 150 ./gpu_model --include-ignored --test-threads 1 --nocapture > "$out/gpu_model.log" 2>&1
  echo "exit $?"
  grep -E "^test |rel err|greedy|perplexity|test result|panicked" "$out/gpu_model.log"
  step "device-routed MoE step (issue 13)"
  timeout 120 ./gpu_route_tests --include-ignored --test-threads 1 --nocapture > "$out/gpu_route.log" 2>&1
  echo "exit $?"
  grep -E "^test |rel err|re-run|mismatch|test result|panicked" "$out/gpu_route.log" | head -40
  step "MoE step regressions (wdmoe-cuda gpu tests, sim lib tests)"
  timeout 100 ./gpu_tests --include-ignored --test-threads 1 > "$out/gpu_tests.log" 2>&1
  echo "exit $?"; grep -E "test result|panicked|FAILED" "$out/gpu_tests.log"
  timeout 70 ./sim_tests --include-ignored --test-threads 1 --skip step_timing > "$out/sim_tests.log" 2>&1
  echo "exit $?"; grep -E "test result|panicked|FAILED" "$out/sim_tests.log"
  sanitizers
  for t in packed_ffn_matches_reference packed_every_tile_width_matches_reference packed_small_tiles_equal_plain_bitwise packed_stream_k_matches_reference_and_is_deterministic packed_f32_every_tile_width_matches_reference; do
    timeout 60 compute-sanitizer --tool racecheck ./gpu_packed_tests --include-ignored --test-threads 1 --exact $t > "$out/racecheck-$t.log" 2>&1
    echo "$t: exit $? $(grep -E 'RACECHECK SUMMARY' "$out/racecheck-$t.log")"
  done
else
  step "ceilings: copy rate and cuBLAS GEMM (torch_baseline.py), HF's MoE block at 512/4,096 tokens"
  timeout 60 python3 torch_baseline.py --tokens 1 --layer-tokens 512,4096 --json "$out/torch.json"
  step "HF MixtralForCausalLM, full size, random fp16 weights: prefill 128 and 2,048, decode"
  timeout 200 python3 mixtral_model_baseline.py --prompt 128 --new 32 --prefill-extra 2048 --json "$out/hf_model.json"
  step "ours, full size (experts and projections in the decode packing): prefill 128 and 2,048, decode"
  timeout 200 ./model_bench --prompts 128,2048 --iters 3 --decode 32 --json "$out/model_bench.json"; echo "exit $?"
  gen() { timeout 100 ./wdmoe generate --device cuda --random-weights --model mixtral-8x7b "$@"; echo "exit $?"; }
  step "wdmoe generate --device cuda --random-weights, full size, θ = 0.2 on the default scenario"
  gen --random-prompt 128 --max-new-tokens 64 --theta 0.2
  step "layer step 512/4,096 tokens: host- vs device-routed (issue 13; HF's block above)"
  timeout 60 ./sim_tests --include-ignored --test-threads 1 --nocapture gpu_layer_prefill_step_timing > "$out/timing.log" 2>&1
  echo "exit $?"; grep -E "LAYER|test result|panicked" "$out/timing.log"
fi
step "done"
