#!/usr/bin/env bash
# Runs wdmoe-core where firmware runs: builds the C static library
# (../staticlib.sh) and this harness for Cortex-M4F (thumbv7em-none-eabihf,
# QEMU mps2-an386) and RV32IMAC (riscv32imac-unknown-none-elf, QEMU virt),
# runs both under QEMU with -icount shift=0, and prints one line per
# measurement (see src/main.rs):
#
#   FIRMWARE target=<triple> api=<rust|c> fn=<name> n=<n> instructions=<N> stack_bytes=<S>
#
# plus, per target, the flash size of the f32 `select_into` + latency subset
# at opt-level "s" (FIRMWARE-SIZE) and the panic check of the C entry points
# on the static library's object (callgraph.py). Asserts the budgets:
# thumbv7em C select (n = 8, k = 2) <= 3,000 instructions and <= 2 KiB of
# stack; min-max for 8 devices <= 100,000 instructions (Rust and C).
#
# Needs: rustup targets thumbv7em-none-eabihf riscv32imac-unknown-none-elf,
# the llvm-tools component, python3, and qemu-system-arm /
# qemu-system-riscv32 on PATH (or QEMU_SYSTEM_ARM / QEMU_SYSTEM_RISCV32).
# Exit status 0 when every check and budget holds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
fw_dir="$target_dir/firmware"
host="$(rustc -vV | sed -n 's/^host: //p')"
tools="$(rustc --print sysroot)/lib/rustlib/$host/bin"
qemu_arm="${QEMU_SYSTEM_ARM:-qemu-system-arm}"
qemu_rv="${QEMU_SYSTEM_RISCV32:-qemu-system-riscv32}"
mkdir -p "$fw_dir"
log="$fw_dir/measurements.txt"
: >"$log"

run_qemu() { # target elf
  case "$1" in
    thumbv7em-*)
      timeout 300 "$qemu_arm" -M mps2-an386 -cpu cortex-m4 -nographic -monitor none \
        -serial none -semihosting-config enable=on,target=native -icount shift=0 -kernel "$2" ;;
    riscv32*)
      timeout 300 "$qemu_rv" -M virt -m 64M -bios none -nographic -monitor none \
        -serial stdio -icount shift=0 -kernel "$2" ;;
  esac
}

for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
  echo "== $t: static library (only wdmoe_* global)"
  lib="$(CARGO_TARGET_DIR="$target_dir" bash "$root/wdmoe-core/staticlib.sh" "$t")"
  echo "$lib"

  echo "== $t: no panic call site reachable from the C entry points"
  obj_dir="$fw_dir/obj-$t"
  rm -rf "$obj_dir" && mkdir -p "$obj_dir"
  (cd "$obj_dir" && "$tools/llvm-ar" x "$lib")
  entries="$("$tools/llvm-nm" -g --defined-only "$obj_dir"/*.o | awk 'NF == 3 {print $3}')"
  # shellcheck disable=SC2086
  python3 "$here/callgraph.py" "$tools/llvm-objdump" "$obj_dir"/*.o $entries

  echo "== $t: the f32 UMa/UMi path loss converts no f64 at run time"
  conv="$("$tools/llvm-objdump" -d -r --no-show-raw-insn --demangle "$obj_dir"/*.o |
    awk '/^[0-9a-f]+ <.*>:$/ {f = $0} /__aeabi_d2f|__truncdfsf2|fcvt\.s\.d/ {print f}' |
    grep -E 'DualSlope|Uma|UmiStreetCanyon|wdmoe_um[ai]_path_loss_db_f32' || true)"
  if [ -n "$conv" ]; then
    echo "FAIL: f64 -> f32 conversions in the f32 path loss:" >&2
    echo "$conv" | sort -u >&2
    exit 1
  fi
  echo "ok"

  echo "== $t: harness (Rust API and C static library) on QEMU"
  WDMOE_CAPI_LIB_DIR="$(dirname "$lib")" cargo build -q --release --target "$t" \
    --manifest-path "$here/Cargo.toml" --target-dir "$fw_dir"
  out="$(run_qemu "$t" "$fw_dir/$t/release/wdmoe-firmware" 2>&1)" || {
    echo "$out"
    echo "FAIL: $t harness exited with an error" >&2
    exit 1
  }
  echo "$out" | tee -a "$log"
  grep -q "^FIRMWARE-DONE target=$t ok" <<<"$out" || { echo "FAIL: $t harness did not finish" >&2; exit 1; }

  echo "== $t: flash of the f32 select_into + latency subset, opt-level s"
  cargo build -q --profile size --features size-probe --target "$t" \
    --manifest-path "$here/Cargo.toml" --target-dir "$fw_dir"
  probe="$fw_dir/$t/size/wdmoe-firmware"
  run_qemu "$t" "$probe" >/dev/null || { echo "FAIL: $t size probe failed" >&2; exit 1; }
  flash="$("$tools/llvm-size" -A "$probe" |
    awk '$1 ~ /^\.(vectors|text|rodata|data|ARM\.exidx)$/ {s += $2} END {print s}')"
  echo "FIRMWARE-SIZE target=$t opt=s subset=select_into+expert_latency_s flash_bytes=$flash (startup code included)" |
    tee -a "$log"
done

echo "== budgets (thumbv7em-none-eabihf)"
fail=0
budget() { # api fn n field max
  local v
  v="$(awk -v a="api=$1" -v f="fn=$2" -v n="n=$3" -v k="$4" '
    $2 == "target=thumbv7em-none-eabihf" && $3 == a && $4 == f && $5 == n {
      for (i = 6; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' "$log")"
  if [ -z "$v" ]; then
    echo "FAIL: no measurement api=$1 fn=$2 n=$3" >&2; fail=1
  elif [ "$v" -gt "$5" ]; then
    echo "FAIL: api=$1 fn=$2 n=$3 $4=$v > budget $5" >&2; fail=1
  else
    echo "ok: api=$1 fn=$2 n=$3 $4=$v <= $5"
  fi
}
budget c select 8 instructions 3000
budget c select 8 stack_bytes 2048
budget rust min_max 8 instructions 100000
budget c min_max 8 instructions 100000
exit "$fail"
