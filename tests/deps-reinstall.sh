#!/usr/bin/env bash
# `make deps` must notice a tool that disappeared after its package check (issue 15: a
# fresh machine's backported qemu-utils was removed by installing qemu-system-x86, and
# `make run` then failed inside qemu/run.sh). This removes qemu-utils, runs the deps step
# and requires `qemu-img` to work again. It changes the machine's packages, so it runs only
# as root (CI) and only when asked (`make test` does).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "deps-reinstall: needs root (it removes and reinstalls qemu-utils)" >&2; exit 1; }
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq qemu-utils >/dev/null
if command -v qemu-img >/dev/null; then
  echo "deps-reinstall: FAILED: qemu-img is still there after removing qemu-utils" >&2
  exit 1
fi
scripts/deps.sh x86_64
if ! out=$(qemu-img --version 2>&1); then
  echo "deps-reinstall: FAILED: make deps left qemu-img missing" >&2
  exit 1
fi
echo "deps-reinstall: passed: qemu-utils removed, make deps put it back (${out%%$'\n'*})"
