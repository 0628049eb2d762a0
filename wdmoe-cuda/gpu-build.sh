#!/usr/bin/env bash
# Builds the GPU test and bench binaries of wdmoe-cuda here (no GPU needed:
# nvcc from the pip wheels, libcuda from a generated stub), copies them with
# the PyTorch baseline and a run script into .device/ (ignored by git), and
# prints what to run on the GPU machine. DEVICE_DIR overrides the output folder.
#
#   bash wdmoe-cuda/gpu-build.sh            # then, on the GPU machine, in the repo root:
#   bash .device/run.sh                  # logs and JSON under $OUT (or ./gpu-out)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-cuda}
stub=${CUDA_STUB_DIR:-$root/.cuda-stub}

# nvcc: PATH, CUDA_PATH, or the pip wheels (installed if missing).
if ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDA_PATH:-}" ]; then
  sp=$(python3 -c 'import site; print(site.getsitepackages()[0])')
  if [ ! -x "$sp/nvidia/cu13/bin/nvcc" ]; then
    python3 -m pip install -q nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
      nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
  fi
  export PATH="$PATH:$sp/nvidia/cu13/bin"
fi
[ -f "$stub/lib64/libcuda.so" ] && [ -f "$stub/lib64/libnccl.so.2" ] || bash wdmoe-cuda/stub/make-stub.sh "$stub"
export CUDA_LIBRARY_PATH="$stub"
# The dist binaries (feature nccl) link the stub libnccl.so.2 here; on the
# GPU machine run-gpu-dist.sh puts the real one on LD_LIBRARY_PATH.
export NCCL_LIBRARY_PATH=${NCCL_LIBRARY_PATH:-$stub/lib64}

msg() { printf '%s\n' "$*" >&2; }
exe() { # cargo JSON messages on stdin -> path of the executable whose target name is $1
  python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])' "$1" | tail -1
}
build() { cargo "$@" --message-format=json-render-diagnostics; }

msg "building wdmoe-cuda tests + decode_bench, wdmoe-sim (cuda) lib tests, benches (cuda) ..."
gpu_tests=$(build test --release --no-run -p wdmoe-cuda --test gpu | exe gpu)
gpu_route_tests=$(build test --release --no-run -p wdmoe-cuda --test gpu_route | exe gpu_route)
gpu_packed_tests=$(build test --release --no-run -p wdmoe-cuda --test gpu_packed | exe gpu_packed)
decode_bench=$(build build --release -p wdmoe-cuda --example decode_bench | exe decode_bench)
prefill_bench=$(build build --release -p wdmoe-cuda --example prefill_bench | exe prefill_bench)
model_bench=$(build build --release -p wdmoe-cuda --example model_bench | exe model_bench)
sim_tests=$(build test --release --no-run -p wdmoe-sim --features cuda --lib | exe wdmoe_sim)
kernels=$(build bench --no-run -p wdmoe-benches --features cuda --bench kernels | exe kernels)
cuda_lib=$(build test --release --no-run -p wdmoe-cuda --lib | exe wdmoe_cuda)
gpu_model=$(build test --release --no-run -p wdmoe-sim --features cuda --test gpu_model | exe gpu_model)
msg "building the NCCL binaries (issue 18): tests/dist.rs, dist_bench, wdmoe with feature dist (cuda + nccl) ..."
dist_tests=$(build test --release --no-run -p wdmoe-cuda --features nccl --test dist | exe dist)
dist_bench=$(build build --release -p wdmoe-cuda --features nccl --example dist_bench | exe dist_bench)
# One wdmoe binary for both: --device cuda and `wdmoe dist` (links libnccl.so.2).
wdmoe=$(build build --release -p wdmoe-sim --features dist --bin wdmoe | exe wdmoe)
# The stalled-rank runs of `wdmoe dist` with assertions (run with WDMOE_BIN=.device/wdmoe).
dist_cli=$(build test --release --no-run -p wdmoe-sim --features dist --test dist_cli | exe dist_cli)

dev=${DEVICE_DIR:-$root/.device}
rm -rf "$dev" && mkdir -p "$dev"
for f in "$gpu_tests:gpu_tests" "$gpu_route_tests:gpu_route_tests" "$gpu_packed_tests:gpu_packed_tests" "$decode_bench:decode_bench" "$prefill_bench:prefill_bench" "$model_bench:model_bench" "$sim_tests:sim_tests" "$kernels:kernels" \
  "$cuda_lib:cuda_lib_tests" "$gpu_model:gpu_model" "$dist_tests:dist_tests" "$dist_bench:dist_bench" "$wdmoe:wdmoe" "$dist_cli:dist_cli_tests"; do
  src=${f%%:*} dst=${f##*:}
  [ -x "$src" ] || { msg "missing binary for $dst"; exit 1; }
  objcopy --strip-debug "$src" "$dev/$dst"
done
# The PyTorch baselines every GPU figure is a ratio against (kept in the repo).
cp wdmoe-cuda/baseline/torch_baseline.py wdmoe-cuda/baseline/mixtral_model_baseline.py "$dev/"
cp wdmoe-cuda/run-gpu.sh "$dev/run.sh"
cp wdmoe-cuda/run-gpu-quick.sh "$dev/quick.sh"
cp wdmoe-cuda/run-gpu-prefill.sh "$dev/prefill.sh"
cp wdmoe-cuda/run-gpu-layer.sh "$dev/layer.sh"
cp wdmoe-cuda/run-gpu-moe.sh "$dev/moe.sh"
cp wdmoe-cuda/run-gpu-model.sh "$dev/model.sh"
cp wdmoe-cuda/run-gpu-route.sh "$dev/route.sh"
cp wdmoe-cuda/run-gpu-packed.sh "$dev/packed.sh"
cp wdmoe-cuda/run-gpu-dist.sh "$dev/dist.sh"
# The prefill cubin itself (embedded with include_bytes, so cuobjdump cannot
# find it inside the binaries): for the SASS check.
cubin=$(ls -t "$CARGO_TARGET_DIR"/release/build/wdmoe-cuda-*/out/ffn_prefill.sm_90a.cubin 2>/dev/null | head -1 || true)
[ -n "$cubin" ] && cp "$cubin" "$dev/"
du -sh "$dev" >&2
cat <<'MSG'
Built into .device/ (ignored by git). On the GPU machine, from the repo root
(the stub libcuda must NOT be on its library path):

    bash .device/run.sh        # writes logs and JSON under $OUT (or ./gpu-out)
    bash .device/quick.sh      # lighter: baseline 1/16 tokens, decode_bench --quick, tests
    bash .device/prefill.sh    # prefill: baseline 16-8192 tokens, prefill_bench, tests, SASS, ncu
    bash .device/layer.sh      # MoE layer step: device policy tests, timing, memcheck
    bash .device/moe.sh        # issue 13: all GPU tests, baseline + layer timings 1-4096, memcheck (< 7 min)
    bash .device/model.sh      # issue 14: the whole model: kernel and model tests, HF baseline, decode/prefill at full size
    bash .device/route.sh      # issue 13, device routing at prefill sizes: its tests, regressions, timings 512/4096, memcheck
    bash .device/packed.sh     # the packed-weights GEMM: its tests, memcheck, timing at Mixtral size
    bash wdmoe-cuda/run-gpu-profile.sh 2048  # ncu: each kernel of a 2,048-token prefill (2 layers)
    bash .device/dist.sh       # issue 18, >= 2 GPUs (nvidia-h200-x2): NCCL tests, dist_bench, wdmoe dist, failure runs (~3 min)

It runs, in one go: nvidia-smi, the PyTorch baseline (torch_baseline.py),
decode_bench (copy rate, launch-shape sweep, expert FFN 1-16 tokens), the GPU
tests with --include-ignored (wdmoe-cuda kernels, wdmoe-sim GPU layer), and
the criterion benches (expert FFN, MoE layer) with CUDA-event timing.
With the device tool: run(command="bash .device/run.sh", carry=[".device"]).
MSG
