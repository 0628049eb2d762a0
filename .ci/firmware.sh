#!/usr/bin/env bash
# wdmoe-core on the targets firmware runs on (called by .ci/core.sh): installs
# what it needs (the rustup targets thumbv7em-none-eabihf and
# riscv32imac-unknown-none-elf, the llvm-tools component, QEMU for ARM and
# RISC-V), then wdmoe-core/firmware/run.sh cross-builds the C static library
# and the harness for both targets, checks the library's symbols and panic
# call sites, runs the harness on QEMU (mps2-an386 Cortex-M4F, virt RV32)
# with asserted results, prints the FIRMWARE lines and asserts the budgets.
# Prints SKIP and succeeds only when the tools cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
skip() { echo "SKIP: firmware checks: $*"; exit 0; }

for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
  if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
    timeout 300 rustup target add "$t" >/dev/null 2>&1 || skip "could not add the rustup target $t"
  fi
done
host="$(rustc -vV | sed -n 's/^host: //p')"
tools="$(rustc --print sysroot)/lib/rustlib/$host/bin"
if [ ! -x "$tools/llvm-objcopy" ]; then
  timeout 300 rustup component add llvm-tools >/dev/null 2>&1 || skip "could not add the llvm-tools component"
fi
command -v python3 >/dev/null || skip "python3 missing"

# QEMU: on PATH; else apt-get install; else (when qemu-utils blocks the
# install, as on Debian 12 images that ship it) the packages unpacked with
# dpkg -x under target/qemu-root plus their shared libraries.
qemu_ok() { "$1" --version >/dev/null 2>&1 && "$2" --version >/dev/null 2>&1; }
arm=qemu-system-arm rv=qemu-system-riscv32
if ! qemu_ok "$arm" "$rv" && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq >/dev/null 2>&1 || true
  timeout 600 apt-get install -y -qq qemu-system-arm qemu-system-misc >/dev/null 2>&1 || true
  if ! qemu_ok "$arm" "$rv"; then
    root="$PWD/target/qemu-root"
    debs="$PWD/target/qemu-debs"
    mkdir -p "$root" "$debs"
    (cd "$debs" && timeout 600 apt-get download qemu-system-arm qemu-system-misc \
      qemu-system-common qemu-system-data >/dev/null 2>&1) || true
    for d in "$debs"/*.deb; do [ -f "$d" ] && dpkg -x "$d" "$root"; done
    timeout 600 apt-get install -y -qq libfdt1 libcapstone4 libpmem1 librdmacm1 libibverbs1 \
      libslirp0 libvdeplug2 >/dev/null 2>&1 || true
    arm="$root/usr/bin/qemu-system-arm" rv="$root/usr/bin/qemu-system-riscv32"
  fi
fi
qemu_ok "$arm" "$rv" || skip "could not install qemu-system-arm / qemu-system-riscv32"
"$arm" --version | head -n1

QEMU_SYSTEM_ARM="$arm" QEMU_SYSTEM_RISCV32="$rv" bash wdmoe-core/firmware/run.sh
