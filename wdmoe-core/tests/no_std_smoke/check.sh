#!/usr/bin/env bash
# Proof that wdmoe-core is `no_std` and heap-free: builds the bare-metal smoke
# binary (src/main.rs: #![no_std], #![no_main], panic = "abort", its own panic
# handler, no global allocator), checks that it really contains the policy and
# no allocator symbol, and runs the hosted build.
#
#  1. host (x86_64-unknown-linux-gnu or whatever rustc's host is): always;
#     the binary is run and must exit 0 (every check in src/main.rs passed).
#  2. thumbv7em-none-eabihf (Cortex-M4F/M7, no OS): when that target is
#     installed (`rustup target add thumbv7em-none-eabihf`); a fresh CI
#     machine without it prints SKIP, unless WDMOE_REQUIRE_BARE_METAL=1,
#     which makes its absence a failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
target_dir="${CARGO_TARGET_DIR:-$here/../../../target}/no_std_smoke"
name=wdmoe-no-std-smoke

# Symbols whose presence would mean something allocates: Rust's allocator
# shims (plain, or v0-mangled as `_RNv..._7___rustc12___rust_alloc` by recent
# rustc: matched anywhere in the name) and the C / C++ heap (exact names).
rust_alloc='__rust_alloc|__rust_dealloc|__rust_realloc|__rust_no_alloc_shim|__rdl_(alloc|dealloc|realloc|oom)|__rg_(alloc|dealloc|realloc|oom)'
c_heap='^(malloc|calloc|realloc|free|aligned_alloc|posix_memalign|memalign|_Znwm|_Znam)(@.*)?$'

check_symbols() {
  local bin="$1"
  local syms
  syms="$(nm "$bin" | awk '{print $NF}')"
  if grep -Eq "$rust_alloc|$c_heap" <<<"$syms"; then
    echo "FAIL: $bin has allocator symbols:" >&2
    grep -E "$rust_alloc|$c_heap" <<<"$syms" >&2
    return 1
  fi
  # Code of Rust's `alloc` crate (legacy or v0 mangling).
  if grep -Eq '^_ZN5alloc|^_R[A-Za-z0-9_]*5alloc' <<<"$syms"; then
    echo "FAIL: $bin contains code of the alloc crate" >&2
    return 1
  fi
  # The policy really is in there (not folded away).
  for f in 6select6select 6select5top_k 4link16shannon_rate_bps 9bandwidth7min_max; do
    if ! grep -q "wdmoe_core${f}" <<<"$syms"; then
      echo "FAIL: $bin lacks wdmoe_core::${f}" >&2
      return 1
    fi
  done
  echo "ok: $bin links the policy, no allocator symbol ($(wc -c <"$bin") bytes)"
}

if [ "${1:-}" = --check-symbols ]; then
  # Runs only the symbol check on the given binaries (to test the check
  # itself: any std binary must fail it).
  shift
  for b in "$@"; do check_symbols "$b"; done
  exit 0
fi

echo "== no_std smoke: host"
cargo build --release --target-dir "$target_dir"
host_bin="$target_dir/release/$name"
check_symbols "$host_bin"
# Every check of src/main.rs runs; the exit status is the first failing one.
timeout 60 "$host_bin"
echo "ok: $host_bin ran, every check passed"

bare=thumbv7em-none-eabihf
sysroot="$(rustc --print sysroot)"
if [ -d "$sysroot/lib/rustlib/$bare/lib" ]; then
  echo "== no_std smoke: $bare (bare metal)"
  cargo build --release --target "$bare" --target-dir "$target_dir"
  bare_bin="$target_dir/$bare/release/$name"
  # A statically linked ARM executable: no OS, no libc, no allocator.
  readelf -h "$bare_bin" | grep -q 'Machine:.*ARM'
  if readelf -d "$bare_bin" 2>/dev/null | grep -q NEEDED; then
    echo "FAIL: $bare_bin is dynamically linked" >&2
    exit 1
  fi
  check_symbols "$bare_bin"
elif [ "${WDMOE_REQUIRE_BARE_METAL:-0}" = 1 ]; then
  echo "FAIL: target $bare is not installed (rustup target add $bare)" >&2
  exit 1
else
  echo "SKIP: target $bare not installed; the hosted no_std build above is the proof here"
fi
