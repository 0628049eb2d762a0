#!/usr/bin/env bash
# CI step for wdmoe-cuda on a machine with no GPU (called by .ci/run; also
# runs alone: bash .ci/cuda.sh). Self-contained:
#  1. installs nvcc 13.0 from PyPI wheels (if no nvcc is found),
#  2. generates a stub libcuda.so and libnccl.so.2 (wdmoe-cuda/stub/make-stub.sh),
#  3. compiles every kernel (build.rs: sm_90a cubin + compute_80 PTX),
#  4. clippy -D warnings on wdmoe-cuda and on wdmoe-sim/benches with `cuda`,
#     and with NCCL (wdmoe-cuda `nccl`, wdmoe-sim `dist`; stub libnccl),
#  5. builds (links) the GPU tests, the decode_bench example and the
#     criterion GPU benches (--no-run), and runs the tests that need no GPU
#     (missing-device error, driver-struct layouts) against the stub.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
t0=$(date +%s)
say() { printf -- '--- cuda: %s (%ss)\n' "$1" "$(( $(date +%s) - t0 ))"; }

if ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDA_PATH:-}" ]; then
  sp=$(python3 -c 'import site; print(site.getsitepackages()[0])')
  if [ ! -x "$sp/nvidia/cu13/bin/nvcc" ]; then
    say "pip install nvcc 13.0"
    python3 -m pip install -q --disable-pip-version-check nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
  fi
  export PATH="$PATH:$sp/nvidia/cu13/bin"
fi
nvcc --version | tail -2

stub=${CUDA_STUB_DIR:-$PWD/.cuda-stub}
say "stub libcuda in $stub"
cargo fetch -q
bash wdmoe-cuda/stub/make-stub.sh "$stub"
export CUDA_LIBRARY_PATH="$stub" NCCL_LIBRARY_PATH="$stub/lib64"

say "clippy (wdmoe-cuda; wdmoe-sim and benches with feature cuda)"
cargo clippy -p wdmoe-cuda --all-targets -- -D warnings
cargo clippy -p wdmoe-sim -p wdmoe-benches --features wdmoe-sim/cuda,wdmoe-benches/cuda --all-targets -- -D warnings

say "clippy with NCCL (wdmoe-cuda feature nccl; wdmoe-sim feature dist), against the stub libnccl"
cargo clippy -p wdmoe-cuda --features nccl --all-targets -- -D warnings
cargo clippy -p wdmoe-sim --features dist --all-targets -- -D warnings

say "build GPU tests, example and benches (no run)"
cargo test -p wdmoe-cuda --no-run
cargo build -p wdmoe-cuda --examples
cargo test -p wdmoe-sim --features cuda --lib --no-run
cargo bench -p wdmoe-benches --features cuda --bench kernels --no-run
cargo test -p wdmoe-cuda --features nccl --test dist --no-run
cargo build -p wdmoe-cuda --features nccl --example dist_bench
cargo build -p wdmoe-sim --features dist --bin wdmoe

say "tests that need no GPU, against the stub (GPU tests are #[ignore]d)"
LD_LIBRARY_PATH="$stub/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test -p wdmoe-cuda
LD_LIBRARY_PATH="$stub/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test -p wdmoe-sim --features cuda --lib layer::gpu
LD_LIBRARY_PATH="$stub/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test -p wdmoe-cuda --features nccl --lib
LD_LIBRARY_PATH="$stub/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test -p wdmoe-sim --features dist --lib dist
# `wdmoe dist` built with NCCL: its errors without a GPU, and the checks of the stalled-rank runs.
LD_LIBRARY_PATH="$stub/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test -p wdmoe-sim --features dist --test dist_cli
say "done"
