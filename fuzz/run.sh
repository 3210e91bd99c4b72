#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 20): `fuzz/run.sh 300` for a longer run.
# cargo-fuzz drives libFuzzer; it needs a few -Z flags, which the stable toolchain accepts
# with RUSTC_BOOTSTRAP=1 (no nightly toolchain is installed or downloaded). Sanitizers are
# off (`--sanitizer none`): the stable toolchain ships no sanitizer runtimes; the targets
# still catch panics, overflows (debug assertions on) and hangs. FUZZ_BUILD=--dev builds
# the targets without optimisation (`make test`'s short smoke run: the build is most of its
# time); by hand the default optimised build fuzzes faster.
set -euo pipefail
secs=${1:-20}
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
targets=$(cargo fuzz list)
[ -n "$targets" ] || { echo "fuzz: no targets" >&2; exit 1; }
n=0
for t in $targets; do
  echo "fuzz: $t for ${secs}s"
  cargo fuzz run ${FUZZ_BUILD:-} --sanitizer none --debug-assertions "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 \
    | grep -E "^(#[0-9]+ +DONE|Done|INFO: -max_total_time|==[0-9]+== ERROR|thread .* panicked|SUMMARY)" || true
  # A crash makes cargo fuzz exit non-zero; pipefail is defeated by grep, so check artifacts.
  if ls "artifacts/$t"/crash-* "artifacts/$t"/timeout-* >/dev/null 2>&1; then
    echo "fuzz: $t found a failing input: $(ls artifacts/$t/)" >&2
    exit 1
  fi
  n=$((n+1))
done
echo "fuzz: $n passed, 0 failed"
