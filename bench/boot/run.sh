#!/usr/bin/env bash
# Boot-time benchmark (not a test): Berth's phases to `services` (UEFI and direct kernel)
# vs. a bare busybox initramfs. RUNS=N (default 3).
set -euo pipefail
exec python3 "$(dirname "$0")/boot_bench.py"
