#!/usr/bin/env bash
# wdmoe-core's extra CI checks, called by .ci/run after the workspace-wide
# fmt / clippy / test. Needs only Rust (stable), a C compiler (`cc`), and
# binutils (`nm`, `readelf`); no network beyond crates.io.
#  1. tests of the core with the C ABI compiled in (feature capi);
#  2. clippy with every feature and target, and warning-free rustdoc;
#  3. the C example: static library + include/wdmoe.h + cc, run with asserts;
#  4. the no_std proof: the bare-metal smoke binary, symbol check, run;
#  5. Miri over the unsafe FFI code, where the miri component is installed;
#  6. the firmware targets (.ci/firmware.sh): Cortex-M4F and RV32IMAC builds
#     of the hygienic static library and of a bare-metal harness run on QEMU,
#     with instruction / stack budgets (installs QEMU with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n--- core: %s (%s) ---\n' "$1" "$(date -u +%H:%M:%S)"; }

step "tests with the C ABI (feature capi)"
cargo test -p wdmoe-core --features capi

step "clippy, all features and targets"
cargo clippy -p wdmoe-core --all-targets --all-features -- -D warnings

step "rustdoc, warnings denied"
RUSTDOCFLAGS="-D warnings" cargo doc -p wdmoe-core --no-deps --features capi

step "format of the smoke and firmware crates (outside the workspace)"
cargo fmt --manifest-path wdmoe-core/tests/no_std_smoke/Cargo.toml --check
cargo fmt --manifest-path wdmoe-core/firmware/Cargo.toml --check

step "C example: static library, cc, run"
bash wdmoe-core/examples/c/build_and_run.sh

step "no_std proof: bare-metal smoke binary"
# The Cortex-M target is a bonus: try to add it, carry on without it.
if ! rustup target list --installed 2>/dev/null | grep -qx thumbv7em-none-eabihf; then
  timeout 60 rustup target add thumbv7em-none-eabihf >/dev/null 2>&1 ||
    echo "(could not add thumbv7em-none-eabihf; the hosted no_std build is checked)"
fi
bash wdmoe-core/tests/no_std_smoke/check.sh

step "Miri over the FFI module's tests (only when the miri component is installed)"
if cargo +nightly miri --version >/dev/null 2>&1; then
  cargo +nightly miri test -p wdmoe-core --features capi --lib
else
  echo "SKIP: cargo +nightly miri not available (rustup +nightly component add miri rust-src)"
fi

step "firmware: Cortex-M4F and RV32IMAC on QEMU (.ci/firmware.sh)"
bash .ci/firmware.sh
