#!/usr/bin/env bash
# Builds the C static library of wdmoe-core (feature `capi`) for a target and
# makes its symbol table safe to link into firmware: only the `wdmoe_*`
# entry points stay global. Everything else the archive carries (its own
# copies of `core`, `libm` and `compiler_builtins`, which defines weak
# `memcpy`, `memset`, `expf`, `powf`, `sqrtf`, ...) becomes local, so it can
# neither replace nor clash with the firmware's C library, whatever the link
# order.
#
#   wdmoe-core/staticlib.sh [TARGET]     # TARGET: a rustc triple; default: host
#
# Prints the path of the finished archive:
#   $CARGO_TARGET_DIR/wdmoe-staticlib/<TARGET or host>/libwdmoe_core.a
#
# How: `cargo rustc --crate-type staticlib` (panic = abort, fat LTO, `--cfg
# wdmoe_staticlib` for the panic handler), then the archive's members are
# linked into one relocatable object (`rust-lld -r`, rooted at the
# `wdmoe_*` symbols: the library's internal references are resolved inside it), `llvm-objcopy
# --keep-global-symbol='wdmoe_*'` localises the rest, and `llvm-ar` packs
# the object. Needs the rustup component llvm-tools (installed on demand).
# Finally `llvm-nm` verifies that no global symbol other than `wdmoe_*` is
# defined (exit status 1 otherwise).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${1:-}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
host="$(rustc -vV | sed -n 's/^host: //p')"
tools="$(rustc --print sysroot)/lib/rustlib/$host/bin"
if [ ! -x "$tools/llvm-objcopy" ]; then
  rustup component add llvm-tools >/dev/null 2>&1 || true
fi
for t in rust-lld llvm-objcopy llvm-ar llvm-nm; do
  [ -x "$tools/$t" ] || { echo "staticlib.sh: $tools/$t missing (rustup component add llvm-tools)" >&2; exit 2; }
done

cd "$root"
CARGO_PROFILE_RELEASE_PANIC=abort \
CARGO_PROFILE_RELEASE_LTO=fat \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_PROFILE_RELEASE_DEBUG=0 \
  cargo rustc -q -p wdmoe-core --release --features capi --crate-type staticlib \
  ${target:+--target "$target"} --target-dir "$target_dir" -- --cfg wdmoe_staticlib
raw="$target_dir/${target:+$target/}release/libwdmoe_core.a"
test -f "$raw"

out_dir="$target_dir/wdmoe-staticlib/${target:-host}"
mkdir -p "$out_dir"
obj="$out_dir/wdmoe_core.o"
# Only the members the entry points need, as a final link would pull them.
roots=()
while read -r sym; do roots+=("--undefined=$sym"); done < <(
  "$tools/llvm-nm" -g --defined-only "$raw" 2>/dev/null | awk 'NF == 3 && $3 ~ /^wdmoe_/ {print $3}' | sort -u)
[ "${#roots[@]}" -gt 0 ] || { echo "staticlib.sh: no wdmoe_* symbol in $raw" >&2; exit 1; }
"$tools/rust-lld" -flavor gnu -r "${roots[@]}" "$raw" -o "$obj"
"$tools/llvm-objcopy" --wildcard --keep-global-symbol='wdmoe_*' "$obj"
rm -f "$out_dir/libwdmoe_core.a"
"$tools/llvm-ar" rcs "$out_dir/libwdmoe_core.a" "$obj"
rm -f "$obj"

# The proof: every defined global (or weak) symbol is a wdmoe_* entry point.
leaks="$("$tools/llvm-nm" -g --defined-only "$out_dir/libwdmoe_core.a" |
  awk 'NF == 3 && $3 !~ /^wdmoe_/ {print $3}')"
if [ -n "$leaks" ]; then
  echo "staticlib.sh: non-wdmoe global symbols in $out_dir/libwdmoe_core.a:" >&2
  echo "$leaks" | head -20 >&2
  exit 1
fi
echo "$out_dir/libwdmoe_core.a"
