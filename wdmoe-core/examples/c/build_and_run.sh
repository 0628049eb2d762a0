#!/usr/bin/env bash
# Builds wdmoe-core as a static library with the C ABI (feature `capi`),
# compiles examples/c/main.c against include/wdmoe.h with `cc`, links it, and
# runs it. Exit status: the C program's (0 = every check passed).
#
#   wdmoe-core/examples/c/build_and_run.sh        # from anywhere
#   CC=clang CARGO_TARGET_DIR=/tmp/t ./build_and_run.sh
#
# The static library is a `no_std` crate: it needs a panic handler, which
# `--cfg wdmoe_staticlib` (given to wdmoe-core only, by `cargo rustc`) adds;
# the rlib that `cargo test` and Rust users link never has one. The whole
# build uses panic = "abort" (nothing can unwind into C) and fat LTO, which
# also drops the precompiled `core`'s references to `rust_eh_personality`, so
# the archive links with a plain C linker (no --gc-sections needed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="$target_dir/c-example"
mkdir -p "$out"

CARGO_PROFILE_RELEASE_PANIC=abort \
CARGO_PROFILE_RELEASE_LTO=fat \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_PROFILE_RELEASE_DEBUG=0 \
  cargo rustc -p wdmoe-core --release --features capi --crate-type staticlib \
  --target-dir "$target_dir" -- --cfg wdmoe_staticlib
lib="$target_dir/release/libwdmoe_core.a"
test -f "$lib"

"${CC:-cc}" -std=c11 -O2 -Wall -Wextra -Werror -pedantic \
  -I "$root/wdmoe-core/include" -I "$here" \
  "$here/main.c" "$lib" -lm -o "$out/wdmoe_c_example"

# The panic handler spins (firmware style); a timeout turns a hang into a failure.
timeout 60 "$out/wdmoe_c_example"

# The same program under AddressSanitizer and UndefinedBehaviorSanitizer, when
# the C toolchain has them (skipped otherwise): catches out-of-bounds writes
# through the out-pointers and layout mismatches between header and library.
if "${CC:-cc}" -std=c11 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
  -I "$root/wdmoe-core/include" -I "$here" \
  "$here/main.c" "$lib" -lm -o "$out/wdmoe_c_example_san" 2>/dev/null; then
  ASAN_OPTIONS=detect_leaks=0 timeout 120 "$out/wdmoe_c_example_san"
  echo "(sanitized build: ok)"
else
  echo "(no sanitizer runtime for ${CC:-cc}; sanitized run skipped)"
fi
