#!/usr/bin/env bash
# Fuzzing for CI (issue 5), called by .ci/run: installs cargo-fuzz if needed,
# builds every target of fuzz/ once (nightly, AddressSanitizer: the `capi`
# target exercises the crate's only unsafe code), then runs each target for a
# bounded time starting from the committed seed corpus fuzz/corpus/<target>/.
# A crash, a panic (a broken invariant), a leak, an out-of-memory or a
# timeout fails the step; the input is left in fuzz/artifacts/<target>/ and
# the reproduction command is printed. Findings become regression tests in
# wdmoe-core/tests/fuzz_regressions.rs (or the simulator's).
#
# Knobs (environment):
#   WDMOE_FUZZ_SECS       seconds per target (default 45: 7 targets + the ASan
#                         build fit in ~11 min on 2 cores; raise it locally)
#   WDMOE_FUZZ_TARGETS    space-separated subset (default: every target)
#   WDMOE_FUZZ_SANITIZER  address | none (default address)
#   WDMOE_FUZZ_JOBS       libFuzzer processes per target (default 1)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${WDMOE_FUZZ_SECS:-45}
sanitizer=${WDMOE_FUZZ_SANITIZER:-address}
jobs=${WDMOE_FUZZ_JOBS:-1}
start=$(date +%s)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is required (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version

targets=${WDMOE_FUZZ_TARGETS:-$(cargo fuzz list)}
echo "fuzz: targets: $(echo $targets)"

echo "fuzz: build (sanitizer $sanitizer)"
cargo +nightly fuzz build --sanitizer "$sanitizer"
echo "fuzz: built in $(( $(date +%s) - start )) s"

# The fuzzer adds inputs to its corpus directory: give it a scratch copy so
# the committed seeds stay as they are.
scratch=target/ci-corpus
rm -rf "$scratch"
failed=()
for t in $targets; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  if [ -d "corpus/$t" ]; then cp corpus/"$t"/* "$scratch/$t/"; fi
  t0=$(date +%s)
  fork=()
  if [ "$jobs" -gt 1 ]; then fork=(-fork="$jobs"); fi
  if cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "$scratch/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      "${fork[@]}" >"target/ci-fuzz-$t.log" 2>&1; then
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "target/ci-fuzz-$t.log" | grep -Eo '[0-9]+$' | tail -1 || true)
    echo "fuzz: $t ok ($(( $(date +%s) - t0 )) s, ${runs:-?} runs)"
  else
    echo "fuzz: $t FAILED, log tail:"
    grep -v '^"' "target/ci-fuzz-$t.log" | tail -40
    echo "fuzz: reproduce with: cd fuzz && cargo +nightly fuzz run --sanitizer $sanitizer $t <artifact above>"
    failed+=("$t")
  fi
done

echo "fuzz: done in $(( $(date +%s) - start )) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failing targets: ${failed[*]}" >&2
  exit 1
fi
