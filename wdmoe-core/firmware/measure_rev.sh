#!/usr/bin/env bash
# Measures an older wdmoe-core with today's harness, for the before/after
# table of FIRMWARE.md:
#
#   wdmoe-core/firmware/measure_rev.sh a33fe88     # the core before issue 16
#
# Exports REV (git archive) to a temporary directory, copies this harness and
# ../staticlib.sh into it, builds both for thumbv7em-none-eabihf and
# riscv32imac-unknown-none-elf with `--features legacy` (only the API that
# existed then) and runs them under QEMU like run.sh. Prints the FIRMWARE
# lines. Same tools as run.sh.
set -euo pipefail
rev="${1:?usage: measure_rev.sh <git revision>}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
qemu_arm="${QEMU_SYSTEM_ARM:-qemu-system-arm}"
qemu_rv="${QEMU_SYSTEM_RISCV32:-qemu-system-riscv32}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$root" archive "$rev" | tar -x -C "$work"
mkdir -p "$work/wdmoe-core/firmware"
cp -r "$here"/{Cargo.toml,Cargo.lock,build.rs,link-arm.ld,link-riscv.ld,src} "$work/wdmoe-core/firmware/"
cp "$root/wdmoe-core/staticlib.sh" "$work/wdmoe-core/"
for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
  lib="$(CARGO_TARGET_DIR="$work/target" bash "$work/wdmoe-core/staticlib.sh" "$t")"
  WDMOE_CAPI_LIB_DIR="$(dirname "$lib")" cargo build -q --release --features legacy \
    --target "$t" --manifest-path "$work/wdmoe-core/firmware/Cargo.toml" --target-dir "$work/target/fw"
  elf="$work/target/fw/$t/release/wdmoe-firmware"
  case "$t" in
    thumbv7em-*)
      timeout 600 "$qemu_arm" -M mps2-an386 -cpu cortex-m4 -nographic -monitor none -serial none \
        -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" 2>&1 ;;
    riscv32*)
      timeout 600 "$qemu_rv" -M virt -m 64M -bios none -nographic -monitor none -serial stdio \
        -icount shift=0 -kernel "$elf" 2>&1 ;;
  esac
done
