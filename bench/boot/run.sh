#!/usr/bin/env bash
# Boot-time benchmark (not a test): Berth's phases vs. a bare busybox initramfs. RUNS=N.
set -euo pipefail
exec python3 "$(dirname "$0")/boot_bench.py"
