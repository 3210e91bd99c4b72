#!/usr/bin/env bash
# Start-time cost of a user-namespace container (issue 16): the same busybox container
# built by sysd's own code (overlay rootfs, bundle, the integrated runtime's create and
# start) with and without `user_namespace = true`, from the rootfs mount until `true` has
# exited; the user-namespace run adds the id-range helper process and one idmapped bind
# per layer. Root only (mounts, namespaces). RUNS=N (default 20) runs of each, median.
#
# Peers: not measured yet. Docker's `userns-remap` needs a Docker engine (none on these
# machines); Podman's `--userns=auto` is in Debian 12 (podman 4.3) but not wired in here.
# This prints Berth's two figures side by side.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "bench/userns: needs root" >&2; exit 1; }
BERTH_USERNS_BENCH=${RUNS:-20} cargo test -q -p berth-sysd --test userns 2>&1 \
  | grep -E "median|error|panicked" || { echo "bench/userns: no figure printed" >&2; exit 1; }
