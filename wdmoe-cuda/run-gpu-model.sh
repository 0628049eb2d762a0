#!/usr/bin/env bash
# The whole model on the GPU (issue 14) and the device-routed MoE step
# (issue 13), on the GPU machine, from the repo root after
# wdmoe-cuda/gpu-build.sh (copied to .device/model.sh; binaries may be
# gzipped). Two modes, each under 9 minutes:
#   bash .device/model.sh check   # every GPU test + compute-sanitizer
#   bash .device/model.sh bench   # HF's whole model, then ours, same call
# check: the model kernels against f64 references (wdmoe-cuda lib tests);
#   the whole model against the CPU reference and HF (gpu_model); the
#   device-routed step (gpu_route_tests); the MoE step regressions
#   (gpu_tests, sim lib tests); memcheck and racecheck.
# bench: mixtral_model_baseline.py (HF's MixtralForCausalLM, full size,
#   random fp16 weights: prefill 128, decode ms/token, the weight-read floor
#   at the copy rate of the call), then `wdmoe generate --device cuda
#   --random-weights` at the same size: θ = 0 (KV cache for 4,096
#   positions) and θ = 0.2 (default scenario), 128-token prompt, 64 new
#   tokens; prefill of 2,048 tokens; the layer-step timings at 512/4,096
#   tokens with torch_baseline.py (host- vs device-routed).
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
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu,memory.total --format=csv
if [ "$mode" = check ]; then
  step "model kernels vs f64 references"
  timeout 60 ./cuda_lib_tests --include-ignored --test-threads 1 model:: 2>&1 | grep -E "^test |test result|panicked|seed|diff" | head -40
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
  step "compute-sanitizer memcheck + racecheck"
  timeout 100 compute-sanitizer --tool memcheck --leak-check no ./gpu_model --include-ignored --test-threads 1 gpu_odd_lengths gpu_kv_cache > "$out/memcheck.log" 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|test result|panicked" "$out/memcheck.log"
  timeout 60 compute-sanitizer --tool racecheck ./cuda_lib_tests --include-ignored --test-threads 1 model::tests::attention model::tests::add_rmsnorm > "$out/racecheck.log" 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard|test result|panicked" "$out/racecheck.log" | head
else
  step "HF MixtralForCausalLM, full size, random fp16 weights (same call as ours below)"
  timeout 150 python3 mixtral_model_baseline.py --prompt 128 --new 32 --json "$out/hf_model.json"
  gen() { timeout 100 ./wdmoe generate --device cuda --random-weights --model mixtral-8x7b "$@"; echo "exit $?"; }
  step "wdmoe generate --device cuda --random-weights, full size, θ = 0 (top-2), KV cache 4,096"
  gen --random-prompt 128 --max-new-tokens 64 --theta 0 --latency-s 1,1,1,1,1,1,1,1 --max-seq 4096
  step "same, θ = 0.2 on the default scenario"
  gen --random-prompt 128 --max-new-tokens 64 --theta 0.2
  step "prefill 2,048 tokens (experts in the decode packing only at full size)"
  gen --random-prompt 2048 --max-new-tokens 2 --theta 0 --latency-s 1,1,1,1,1,1,1,1
  # Half depth (16 layers): both expert layouts fit, so prompts take the
  # grouped tensor-core path; HF at the same depth and prompt.
  m16=$(mktemp -d)
  cat > "$m16/config.json" <<'JSON'
{"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
 "intermediate_size": 14336, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
 "head_dim": 128, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
 "num_local_experts": 8, "num_experts_per_tok": 2, "tie_word_embeddings": false, "sliding_window": null,
 "bos_token_id": 1, "eos_token_id": 2}
JSON
  step "16 layers: HF prefill 2,048 tokens"
  timeout 120 python3 mixtral_model_baseline.py --layers 16 --prompt 2048 --new 2 --json "$out/hf_16l_2048.json"
  step "16 layers: ours prefill 2,048 tokens (grouped tensor-core experts, one chunk)"
  timeout 100 ./wdmoe generate --device cuda --random-weights --model "$m16" --random-prompt 2048 \
    --max-new-tokens 2 --theta 0 --latency-s 1,1,1,1,1,1,1,1 --prefill-chunk 2048; echo "exit $?"
  step "16 layers: ours prefill 128 tokens, decode (grouped prefill layout held)"
  timeout 100 ./wdmoe generate --device cuda --random-weights --model "$m16" --random-prompt 128 \
    --max-new-tokens 32 --theta 0 --latency-s 1,1,1,1,1,1,1,1; echo "exit $?"
  step "layer step 512/4,096 tokens: torch_baseline.py, then host- vs device-routed (issue 13)"
  timeout 60 python3 torch_baseline.py --tokens 1 --layer-tokens 512,4096 --json "$out/torch.json"
  timeout 60 ./sim_tests --include-ignored --test-threads 1 --nocapture gpu_layer_prefill_step_timing > "$out/timing.log" 2>&1
  echo "exit $?"; grep -E "LAYER|test result|panicked" "$out/timing.log"
fi
step "done"
