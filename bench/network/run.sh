#!/usr/bin/env bash
# Workload networking (issue 18): time from `osctl run --network bridge -p` to the
# published port answering the host (through QEMU hostfwd, restrict=on), and HTTP
# throughput through a published port (DNAT to a bridged container) against the same
# server in a host-network container, two ways: on the node's loopback (the client in the
# host-network `admin` container fetches 127.0.0.1:PORT: output-chain DNAT, bridge, veth),
# and from the host through QEMU's user-mode network (which caps both lanes under TCG).
# Goal: the published port >= 0.9x host networking on loopback. RUNS=N (default 5), medians.
#
# Peer: Docker's userland-proxy-free DNAT path is the model; Docker is not on these
# machines' guests, so Berth's two lanes are printed side by side.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${RUNS:-5}
image=${BERTH_IMAGE:-build/x86_64/berth.img}
osctl=${BERTH_OSCTL:-target/debug/osctl}
[ -f "$image" ] || { echo "bench/network: no image at $image (make image)" >&2; exit 1; }
[ -x "$osctl" ] || { echo "bench/network: no osctl at $osctl" >&2; exit 1; }
work=$(mktemp -d /tmp/bench-network.XXXXXX)
trap '[ -f "$work/vm/qemu.pid" ] && kill "$(cat "$work/vm/qemu.pid")" 2>/dev/null; rm -rf "$work"' EXIT
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pb=$(free) ph=$(free) pr=$(free)
serve='mkdir -p /dev/shm/www && dd if=/dev/zero of=/dev/shm/www/big bs=1M count=24 2>/dev/null && echo ok > /dev/shm/www/index.html && exec busybox httpd -f -p PORT -h /dev/shm/www'
cat > "$work/berth.toml" <<TOML
[[containers]]
name = "via-bridge"
image = "admin"
ports = ["8090:80"]
command = ["/bin/sh", "-c", "${serve/PORT/80}"]

[[containers]]
name = "via-host"
image = "admin"
network = "host"
command = ["/bin/sh", "-c", "${serve/PORT/8091}"]
TOML
qemu/run.sh --headless --direct --state-dir "$work/vm" --config "$work/berth.toml" \
  --hostfwd "$pb:8090" --hostfwd "$ph:8091" --hostfwd "$pr:8095" "$image" >/dev/null
for _ in $(seq 600); do grep -q "berth: ready" "$work/vm/serial.log" 2>/dev/null && break; sleep 0.5; done
o=("$osctl" --connect "unix:path=$work/vm/osctl.sock")
for p in $pb $ph; do
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$p/index.html" >/dev/null && break; sleep 1; done
done

python3 - "$runs" "$pb" "$ph" "$pr" "${o[@]}" <<'PY'
import subprocess, sys, time
runs, pb, ph, pr = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
osctl = sys.argv[5:]
def med(v): v = sorted(v); return v[len(v) // 2]
def rate(port):
    out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                          f"http://127.0.0.1:{port}/big"], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]) / float(out[1]) / 2**20
b, h = [], []
for _ in range(runs):
    b.append(rate(pb)); h.append(rate(ph))
print(f"bench/network: published port (bridge, DNAT)  median {med(b):6.1f} MiB/s  ({runs} x 24 MiB)")
print(f"bench/network: host network                   median {med(h):6.1f} MiB/s")
print(f"bench/network: published / host = {med(b)/med(h):.2f} (through QEMU user networking)")
def loop(port):
    # busybox nc quits when its stdin ends: a FIFO kept open feeds it the request.
    sh = ("rm -f /tmp/q; mkfifo /tmp/q; (printf 'GET /big HTTP/1.0\\r\\n\\r\\n'; sleep 60) > /tmp/q & "
          "a=$(cut -d' ' -f1 /proc/uptime); n=$(nc 127.0.0.1 %s < /tmp/q | wc -c); "
          "b=$(cut -d' ' -f1 /proc/uptime); kill $! 2>/dev/null; echo $n $a $b" % port)
    out = subprocess.run(osctl + ["exec", "-T", "admin", "--", "sh", "-c", sh],
                         capture_output=True, text=True, check=True).stdout.split()
    n, a, z = int(out[0]), float(out[1]), float(out[2])
    assert n > 24 * 2**20, f"short read from {port}: {n} bytes"
    return n / (z - a) / 2**20
lb, lh = [], []
for _ in range(runs):
    lb.append(loop(8090)); lh.append(loop(8091))
print(f"bench/network: loopback, published port       median {med(lb):6.1f} MiB/s")
print(f"bench/network: loopback, host network         median {med(lh):6.1f} MiB/s")
print(f"bench/network: loopback published / host = {med(lb)/med(lh):.2f} (goal >= 0.9)")
t = []
for i in range(runs):
    name = f"first-{i}"
    cmd = "echo ok > /index.html && exec busybox httpd -f -p 80 -h /"
    s = time.perf_counter()
    subprocess.run(osctl + ["run", "admin", "--name", name, "-p", "8095:80", "--", "/bin/sh", "-c", cmd],
                   check=True, capture_output=True)
    while subprocess.run(["curl", "-sf", "--max-time", "2", f"http://127.0.0.1:{pr}/index.html"],
                         capture_output=True).returncode:
        time.sleep(0.05)
    t.append(time.perf_counter() - s)
    subprocess.run(osctl + ["rm", "-f", name], check=True, capture_output=True)
print(f"bench/network: osctl run -p -> port answers   median {med(t)*1000:6.0f} ms  (min {min(t)*1000:.0f}, max {max(t)*1000:.0f})")
PY
