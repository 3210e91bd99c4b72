#!/usr/bin/env bash
# Pull benchmark (not a test): cold pull + unpack of a synthetic 5-layer ~200 MB image
# from a local docker-registry, Berth (`berth-image pull`, layers unpacked for overlayfs
# in the same pass as the download) vs `skopeo copy` to an OCI layout + `umoci unpack`.
# Alternating runs; prints medians, the ratio and peak RSS. RUNS=N (default 5).
# Needs: docker-registry skopeo umoci (make deps), python3, /usr/bin/time, losetup and
# mkfs.ext4. Run as root (fresh loop-mounted filesystems; umoci unpack and Berth keep file
# ownership).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
RUNS=${RUNS:-5}
work=$(mktemp -d /var/tmp/berth-bench-pull.XXXXXX)
reg_pid=
loopdev=
# Each cold run, of either side, gets a fresh ext4 (3 GiB, on a loop device with direct
# I/O, so syncs reach the disk): file creation on a long-used ext4 slows down with every
# tree removed from it (the inode allocator skips recently deleted inodes), and that
# would make the later runs of both sides slower than the first.
fresh_fs() {
  if mountpoint -q "$work/fs"; then umount "$work/fs"; fi
  if [ -n "$loopdev" ]; then losetup -d "$loopdev"; loopdev=; fi
  rm -f "$work/fs.img"
  truncate -s 3G "$work/fs.img"
  loopdev=$(losetup --direct-io=on --show -f "$work/fs.img")
  mkfs.ext4 -q -F "$loopdev"
  mkdir -p "$work/fs"
  mount "$loopdev" "$work/fs"
  sync
}
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null
  wait 2>/dev/null || true
  if mountpoint -q "$work/fs" 2>/dev/null; then umount "$work/fs"; fi
  [ -n "$loopdev" ] && losetup -d "$loopdev"
  rm -rf "$work"
}
trap cleanup EXIT

echo "bench/pull: building berth-image (release)"
(cd "$repo" && cargo build --release -q -p berth-image)
bin="${CARGO_TARGET_DIR:-$repo/target}/release/berth-image"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
reg_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

echo "bench/pull: building the synthetic image (5 layers, ~200 MB, mixed small and large files)"
layout="$work/layout"
umoci init --layout "$layout" >/dev/null
umoci new --image "$layout:bench" >/dev/null
for i in 1 2 3 4 5; do
  b="$work/bundle$i"
  umoci unpack --image "$layout:bench" "$b" >/dev/null
  python3 - "$b/rootfs" "$i" <<'PY'
import os, random, sys
root, layer = sys.argv[1], int(sys.argv[2])
rnd = random.Random(layer)
d = os.path.join(root, f"layer{layer}")
os.makedirs(d)
# Small files: 2000 per layer, 1-16 KiB, half text-like (compressible), half random.
for k in range(2000):
    sub = os.path.join(d, f"dir{k % 50}")
    os.makedirs(sub, exist_ok=True)
    n = rnd.randint(1024, 16384)
    data = os.urandom(n) if k % 2 else (f"line {k} of layer {layer}\n" * (n // 20)).encode()
    with open(os.path.join(sub, f"f{k}"), "wb") as f:
        f.write(data)
# Large files: ~20 MiB random + ~2 x 8 MiB compressible per layer.
with open(os.path.join(d, "big.bin"), "wb") as f:
    f.write(os.urandom(20 << 20))
for j in range(2):
    with open(os.path.join(d, f"log{j}.txt"), "wb") as f:
        f.write((f"{layer}-{j} lorem ipsum dolor sit amet consectetur\n" * ((8 << 20) // 48)).encode())
PY
  umoci repack --image "$layout:bench" "$b" >/dev/null
  rm -rf "$b"
done
du -sh "$layout" | sed 's/^/bench\/pull: layout /'
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:bench" "docker://127.0.0.1:$port/bench/app:1"
ref="127.0.0.1:$port/bench/app:1"

: > "$work/berth.txt"; : > "$work/peer.txt"
for r in $(seq "$RUNS"); do
  fresh_fs
  /usr/bin/time -f "%e %M" -o "$work/t" "$bin" pull "$ref" --store "$work/fs/store" --insecure >/dev/null
  cat "$work/t" >> "$work/berth.txt"
  fresh_fs
  /usr/bin/time -f "%e %M" -o "$work/t1" skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/fs/oci:bench"
  /usr/bin/time -f "%e %M" -o "$work/t2" umoci unpack --image "$work/fs/oci:bench" "$work/fs/bundle" >/dev/null
  python3 -c "
a=open('$work/t1').read().split(); b=open('$work/t2').read().split()
print(float(a[0])+float(b[0]), max(int(a[1]), int(b[1])))" >> "$work/peer.txt"
  echo "bench/pull: run $r: berth $(cut -d' ' -f1 "$work/t")s, skopeo+umoci $(tail -1 "$work/peer.txt" | cut -d' ' -f1)s"
done
python3 - "$work/berth.txt" "$work/peer.txt" <<'PY'
import statistics, sys
def load(p):
    rows = [l.split() for l in open(p) if l.strip()]
    return [float(r[0]) for r in rows], [int(r[1]) for r in rows]
bt, brss = load(sys.argv[1]); pt, prss = load(sys.argv[2])
mb, mp = statistics.median(bt), statistics.median(pt)
print(f"bench/pull: berth-image pull      median {mb:.2f} s  peak RSS {max(brss)/1024:.0f} MiB")
print(f"bench/pull: skopeo copy + umoci   median {mp:.2f} s  peak RSS {max(prss)/1024:.0f} MiB")
print(f"bench/pull: ratio {mp/mb:.2f}x (goal: >= 2x)")
PY
