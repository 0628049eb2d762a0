#!/usr/bin/env bash
# Builds wdmoe-core as a static library with the C ABI (feature `capi`),
# compiles examples/c/main.c against include/wdmoe.h with `cc`, links it, and
# runs it. Exit status: the C program's (0 = every check passed).
#
#   wdmoe-core/examples/c/build_and_run.sh        # from anywhere
#   CC=clang CARGO_TARGET_DIR=/tmp/t ./build_and_run.sh
#
# The static library comes from ../../staticlib.sh: a `no_std` crate built
# with its panic handler (`--cfg wdmoe_staticlib`, given to wdmoe-core only;
# the rlib that `cargo test` and Rust users link never has one), panic =
# "abort" and fat LTO, then reduced to one object whose only global symbols
# are the wdmoe_* entry points, so it links with a plain C linker and
# cannot replace the C library's memcpy / expf / ... (checked below).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="$target_dir/c-example"
mkdir -p "$out"

# The archive with only the wdmoe_* symbols global (see ../../staticlib.sh).
lib="$(CARGO_TARGET_DIR="$target_dir" bash "$root/wdmoe-core/staticlib.sh")"
test -f "$lib"

"${CC:-cc}" -std=c11 -O2 -Wall -Wextra -Werror -pedantic \
  -I "$root/wdmoe-core/include" -I "$here" \
  "$here/main.c" "$lib" -lm -o "$out/wdmoe_c_example"

# The panic handler spins (firmware style); a timeout turns a hang into a failure.
timeout 60 "$out/wdmoe_c_example"

# Symbol hygiene: the library linked before a stand-in C library; memcpy,
# expf and sqrtf must come from the stand-in.
rm -f "$out/libstandin.a"
for m in 1 2 3; do
  "${CC:-cc}" -std=c11 -O2 -Wall -Wextra -Werror -fno-builtin -DMEMBER=$m \
    -c "$here/standin_libc.c" -o "$out/standin_libc_$m.o"
  ar rcs "$out/libstandin.a" "$out/standin_libc_$m.o"
done
"${CC:-cc}" -std=c11 -O2 -Wall -Wextra -Werror -fno-builtin -I "$root/wdmoe-core/include" \
  "$here/symbols_main.c" "$lib" "$out/libstandin.a" -lm -o "$out/wdmoe_symbols"
timeout 60 "$out/wdmoe_symbols"

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
