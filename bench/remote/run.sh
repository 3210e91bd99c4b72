#!/usr/bin/env bash
# The remote API's cost (issue 17): `osctl status` round trips from the host over the
# mutual-TLS port (QEMU hostfwd to the guest's 7443, restrict=on) against the same call over
# the virtio-serial osctl channel, and the RSS of init + sysd with the listener on (after
# the TLS calls) against a boot without `[api]`. Goal: init + sysd under 12 MiB.
# RUNS=N calls each way (default 20), medians. Needs the image (`make image`) and osctl.
#
# Peer: Talos's apid is the anchor of the design; its figures need a Talos VM, which these
# machines cannot fetch, so this prints Berth's own two lanes side by side.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${RUNS:-20}
image=${BERTH_IMAGE:-build/x86_64/berth.img}
osctl=${BERTH_OSCTL:-target/debug/osctl}
[ -f "$image" ] || { echo "bench/remote: no image at $image (make image)" >&2; exit 1; }
[ -x "$osctl" ] || { echo "bench/remote: no osctl at $osctl (cargo build -p berth-osctl)" >&2; exit 1; }
work=$(mktemp -d /tmp/bench-remote.XXXXXX)
cleanup() { for d in "$work"/vm-*; do [ -f "$d/qemu.pid" ] && kill "$(cat "$d/qemu.pid")" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
osctl=$(cd "$(dirname "$osctl")" && pwd)/$(basename "$osctl")
(cd "$work" && "$osctl" pki init --out ca >/dev/null)
(cd "$work" && "$osctl" pki client --ca ca --role admin --ttl 1h --context bench \
  --endpoint "127.0.0.1:$port" --out client.toml >/dev/null)
{ printf '[api]\nca = """\n'; cat "$work/ca/ca.crt"; printf '"""\nca_key = """\n'; cat "$work/ca/ca.key"; printf '"""\n'; } > "$work/api.toml"
: > "$work/none.toml"

boot() { # name config [hostfwd]
  qemu/run.sh --headless --direct --state-dir "$work/vm-$1" --config "$2" ${3:+--hostfwd "$3"} "$image" >/dev/null
  for _ in $(seq 600); do grep -q "berth: ready" "$work/vm-$1/serial.log" 2>/dev/null && return; sleep 0.5; done
  echo "bench/remote: $1 did not boot" >&2; exit 1
}
times() { # label cmd...: median wall ms of $runs runs
  python3 - "$runs" "$@" <<'PY'
import subprocess, sys, time
runs = int(sys.argv[1]); label = sys.argv[2]; cmd = sys.argv[3:]
t = []
for _ in range(runs):
    s = time.perf_counter(); r = subprocess.run(cmd, capture_output=True); t.append((time.perf_counter() - s) * 1000)
    if r.returncode: sys.exit(f"bench/remote: {label} failed: {r.stderr.decode()}")
t.sort(); print(f"bench/remote: {label:<34} median {t[len(t)//2]:6.1f} ms  (min {t[0]:.1f}, max {t[-1]:.1f}, {runs} runs)")
PY
}
rss() { # label osctl-args...
  "$@" -o json status | python3 -c 'import json,sys; s=json.load(sys.stdin); i,d=s["init_rss_kib"],s["sysd_rss_kib"]; print(f"bench/remote: RSS {sys.argv[1]:<28} init {i/1024:.1f} MiB + sysd {d/1024:.1f} MiB = {(i+d)/1024:.1f} MiB (goal < 12)")' "$label"
}

boot api "$work/api.toml" "$port:7443"
tls=(env -u BERTH_CONNECT BERTH_CONFIG="$work/client.toml" "$osctl" --context bench)
serial=("$osctl" --connect "unix:path=$work/vm-api/osctl.sock")
for _ in $(seq 120); do "${tls[@]}" status >/dev/null 2>&1 && break; sleep 1; done
times "status over TLS (hostfwd, mTLS)" "${tls[@]}" status
times "status over virtio-serial" "${serial[@]}" status
label="with the TLS listener" rss "${tls[@]}"
kill "$(cat "$work/vm-api/qemu.pid")"
boot none "$work/none.toml"
label="without [api]" rss "${serial[0]}" --connect "unix:path=$work/vm-none/osctl.sock"
