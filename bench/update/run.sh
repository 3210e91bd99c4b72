#!/usr/bin/env bash
# Update baseline (not a test): plain `dd` of the Berth root image onto a virtio disk
# inside a QEMU guest, to compare with Berth's updater writing the same image to the
# inactive slot partition and reading it back for verification.
#
# Boots build/<arch>/kernel/vmlinuz directly (TCG, q35, -m 1024 -smp 2) with a throwaway
# busybox initramfs that loads virtio_blk (+ dm-verity), with three virtio disks:
#   vda  raw copy of build/x86_64/root.img (source, read-only)
#   vdb  blank 512 MiB raw file (target, cache=writeback like qemu/run.sh) with a GPT whose
#        partition 1 ("slot", at 1 MiB) is exactly the root image size, so the read-back
#        steps can hash the whole partition like the updater reads its slot
#   vdc  blank 512 MiB qcow2 (target; Berth's qemu/run.sh boots a qcow2 overlay)
# Each dd copies exactly root_bytes; the guest page cache is dropped before every step.
# Prints per-step seconds for each boot, then min and median. RUNS=N (default 3).
# Needs: qemu-system-x86, qemu-utils (qemu-img), fdisk (sfdisk), cpio, gzip. Optional:
# dmsetup and cryptsetup-bin (veritysetup), copied into the initramfs with their libraries
# for the dm-verity read-backs. Exits 1 if a step failed or a read-back hash mismatched.
# Runs one QEMU at a time; scratch under /tmp/dd-bench, removed on exit (KEEP=1 keeps it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
RUNS=${RUNS:-3}
b=$repo/build/x86_64
kdir=$b/kernel
[ -f "$b/image.json" ] || { echo "run.sh: no $b/image.json (run 'make image')" >&2; exit 1; }
mkdir -p /tmp/dd-bench
work=$(mktemp -d /tmp/dd-bench/run.XXXXXX)
qpid=
cleanup() {
  [ -n "$qpid" ] && kill "$qpid" 2>/dev/null; wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "bench/update: kept $work"; else rm -rf "$work"; rmdir /tmp/dd-bench 2>/dev/null || true; fi
}
trap cleanup EXIT
# Snapshot image.json + root image (build/ may be rebuilt meanwhile); retry until they match.
json=$work/image.json
jv() { sed -n "s/^ *\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$json"; }
for try in 1 2 3 4 5 6 7 8 9 10; do
  cp "$b/image.json" "$json"
  root=$repo/$(jv root_image); bytes=$(jv root_bytes)
  [ -f "$root" ] && cp "$root" "$work/src.raw"
  cmp -s "$b/image.json" "$json" && [ -f "$work/src.raw" ] && [ "$(stat -c %s "$work/src.raw")" = "$bytes" ] && break
  [ "$try" = 10 ] && { echo "run.sh: $root does not match image.json (build in progress?)" >&2; exit 1; }
  sleep 3
done
kver=$(jv kernel); roothash=$(jv root_hash); salt=$(jv verity_salt); nblocks=$(jv data_blocks)
moddir=$kdir/lib/modules/$kver
bb=$kdir/busybox
sha=$(sha256sum "$work/src.raw" | cut -d' ' -f1)

# --- initramfs ---------------------------------------------------------------------
ir=$work/initramfs
mkdir -p "$ir"/{bin,dev,proc,sys,tmp,mods}
cp "$bb" "$ir/bin/busybox"
# Modules in dependency order, resolved from modules.dep (decompressed if .ko.xz/.ko.zst).
declare -A seen=()
order=()
add_mod() { # $1 = path relative to moddir, as in modules.dep
  local m=$1 d
  [ -n "${seen[$m]:-}" ] && return
  seen[$m]=1
  for d in $(grep -E "^$m:" "$moddir/modules.dep" | cut -d: -f2); do add_mod "$d"; done
  order+=("$m")
}
for name in virtio_pci virtio_blk dm-verity; do
  m=$(grep -E "/$name\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | cut -d: -f1)
  [ -n "$m" ] || { echo "run.sh: module $name not in modules.dep" >&2; exit 1; }
  add_mod "$m"
done
: > "$ir/mods/order"
for m in "${order[@]}"; do
  base=$(basename "$m"); out=${base%.xz}; out=${out%.zst}; out=${out%.gz}
  case "$base" in
    *.xz) xz -dc "$moddir/$m" > "$ir/mods/$out" ;;
    *.zst) zstd -qdc "$moddir/$m" > "$ir/mods/$out" ;;
    *.gz) gzip -dc "$moddir/$m" > "$ir/mods/$out" ;;
    *) cp "$moddir/$m" "$ir/mods/$out" ;;
  esac
  echo "$out" >> "$ir/mods/order"
done
# Optional host tools (dynamically linked), copied with their libraries: dmsetup for the
# kernel dm-verity read, veritysetup for the userspace tree check (what the updater does).
for t in dmsetup veritysetup; do
  p=$(PATH=$PATH:/usr/sbin:/sbin command -v $t) || { echo "bench/update: no $t on the host, skipping its steps"; continue; }
  for f in "$p" $(ldd "$p" | grep -o '/[^ ]*'); do
    mkdir -p "$ir$(dirname "$f")"; cp -L "$f" "$ir$f"
  done
  ln -s "$p" "$ir/bin/$t"
done
cat > "$ir/bench.conf" <<EOF
BYTES=$bytes
SHA=$sha
NB=$nblocks
ROOTHASH=$roothash
SALT=$salt
EOF
cat > "$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
. /bench.conf
for m in $(cat /mods/order); do insmod /mods/$m || echo "BENCHERR insmod $m"; done
i=0; while { [ ! -b /dev/vdc ] || [ ! -b /dev/vdb1 ]; } && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
echo "BENCHINFO kernel $(uname -r) clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "BENCHINFO sizes vda=$(cat /sys/block/vda/size) vdb=$(cat /sys/block/vdb/size) vdc=$(cat /sys/block/vdc/size) vdb1=$(cat /sys/block/vdb/vdb1/size) sectors; cache vdb=$(cat /sys/block/vdb/queue/write_cache)"
echo "BENCHINFO cpuflags $(grep -m1 -o -w -E 'sha_ni|avx2|avx512f|aes' /proc/cpuinfo | sort -u | tr '\n' ' ')"
# /proc/uptime via the shell builtin: 10 ms resolution but no fork inside the timed window
# (a fork of adjtimex for microseconds costs ~50 ms under TCG).
dropc() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# step NAME CMD: drop the guest page cache, run CMD (stdout -> /tmp/out), print seconds.
step() {
  n=$1; shift; dropc
  read t0 x < /proc/uptime; eval "$*" > /tmp/out 2> /tmp/err; rc=$?; read t1 x < /proc/uptime
  echo "BENCH $n $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}") rc=$rc $(tr '\n' ' ' < /tmp/err | cut -c1-120)"
}
C="bs=1M count=$BYTES"; CB=iflag=count_bytes; CD=iflag=count_bytes,direct
step dd_launch "dd if=/dev/zero of=/dev/null count=0"
step src_read_direct "dd if=/dev/vda of=/dev/null $C $CD"
step src_read_buffered "dd if=/dev/vda of=/dev/null $C $CB"
# Writes: each into a fresh (never written) region of the target: the slot partition
# vdb1 (1 MiB..), then raw vdb at 64, 128 and 192 MiB.
step w_fsync "dd if=/dev/vda of=/dev/vdb1 $C $CB conv=fsync"
step w_direct_fsync "dd if=/dev/vda of=/dev/vdb $C $CB seek=64 oflag=direct conv=fsync"
step w_direct_noflush "dd if=/dev/vda of=/dev/vdb $C $CB seek=128 oflag=direct"
step w_fsync_every4M "for i in 0 1 2 3; do dd if=/dev/vda of=/dev/vdb bs=4M skip=\$i seek=\$((48+i)) count=1 conv=notrunc,fsync; done"
step w_fsync_qcow2 "dd if=/dev/vda of=/dev/vdc $C $CB conv=fsync"
# Read-back of the w_fsync copy in the slot partition vdb1.
step r_direct "dd if=/dev/vdb1 of=/dev/null $C $CD"
step r_sha256 "sha256sum /dev/vdb1"
[ "$(cut -d' ' -f1 /tmp/out)" = "$SHA" ] || echo "BENCHERR r_sha256 mismatch $(cat /tmp/out)"
step r_direct_sha256 "dd if=/dev/vdb1 $C $CD | sha256sum"
[ "$(cut -d' ' -f1 /tmp/out)" = "$SHA" ] && echo "BENCHINFO readback sha256 OK" || echo "BENCHERR readback sha256 mismatch $(cat /tmp/out)"
step r_qcow2_direct_sha256 "dd if=/dev/vdc $C $CD | sha256sum"
[ "$(cut -d' ' -f1 /tmp/out)" = "$SHA" ] || echo "BENCHERR qcow2 readback sha256 mismatch"
cat /dev/vda > /tmp/img
step sha256_ram "sha256sum /tmp/img"
rm -f /tmp/img
if [ -e /bin/dmsetup ]; then
  T="0 $((NB * 8)) verity 1 /dev/vdb1 /dev/vdb1 4096 4096 $NB $((NB + 1)) sha256 $ROOTHASH $SALT"
  step verity_setup "dmsetup --noudevsync --noudevrules create rb --readonly --table '$T'"
  dev=/dev/dm-0
  step verity_read_direct "dd if=$dev of=/dev/null bs=1M iflag=direct"
  step verity_read_buffered "dd if=$dev of=/dev/null bs=1M"
  dmsetup --noudevsync --noudevrules remove rb
fi
if [ -e /bin/veritysetup ]; then
  mkdir -p /run/cryptsetup
  step veritysetup_verify "veritysetup verify /dev/vdb1 /dev/vdb1 $ROOTHASH --hash-offset=$((NB * 4096))"
fi
echo BENCHDONE
poweroff -f
EOF
chmod +x "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initramfs.cpio.gz"

# --- boots ---------------------------------------------------------------------------
echo "bench/update: kernel $kver, root image $root ($bytes bytes, $(awk "BEGIN{printf \"%.2f\", $bytes/1048576}") MiB), $RUNS boots"
for r in $(seq "$RUNS"); do
  rm -f "$work/tgt.raw" "$work/tgt.qcow2"
  truncate -s 512M "$work/tgt.raw"
  printf 'label: gpt\nstart=2048, size=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="slot"\n' \
    $((bytes / 512)) | sfdisk -q "$work/tgt.raw" >/dev/null
  qemu-img create -q -f qcow2 "$work/tgt.qcow2" 512M
  timeout 600 qemu-system-x86_64 -accel tcg -M q35 -cpu max -m 1024 -smp 2 \
    -nographic -no-reboot -nic none \
    -kernel "$kdir/vmlinuz" -initrd "$work/initramfs.cpio.gz" \
    -append 'console=ttyS0 loglevel=3 panic=-1' \
    -drive "file=$work/src.raw,format=raw,if=virtio,readonly=on" \
    -drive "file=$work/tgt.raw,format=raw,if=virtio" \
    -drive "file=$work/tgt.qcow2,format=qcow2,if=virtio" \
    < /dev/null > "$work/console.$r.log" 2>&1 &
  qpid=$!
  others=$(pgrep -c qemu-system || true); others=$((others - 1))
  echo "--- boot $r: host load $(cut -d' ' -f1-3 /proc/loadavg), $others other QEMU process(es) running"
  wait "$qpid" || true
  qpid=
  tr -d '\r' < "$work/console.$r.log" | grep -o 'BENCH.*' > "$work/bench.$r" || true
  grep -q BENCHDONE "$work/bench.$r" || { echo "run.sh: boot $r did not finish; console:" >&2; tail -30 "$work/console.$r.log" >&2; exit 1; }
  grep -E '^BENCH(INFO|ERR)' "$work/bench.$r" | sed 's/^/  /'
  awk '$1=="BENCH"{printf "  %-24s %s s%s\n", $2, $3, ($4=="rc=0" ? "" : "  FAILED " $0)}' "$work/bench.$r"
done

echo "--- summary over $RUNS boots (seconds, failed steps left out; $bytes bytes per step; guest page cache dropped before each)"
cat "$work"/bench.* | awk '$1=="BENCH" && $4=="rc=0"{v[$2]=v[$2] " " $3; if(!($2 in o)){o[$2]=++n; k[n]=$2}}
  END{printf "  %-24s %8s %8s   all\n", "step", "min", "median"
      for(i=1;i<=n;i++){c=split(substr(v[k[i]],2),a," ")
        for(x=1;x<=c;x++)for(y=x+1;y<=c;y++)if(a[y]+0<a[x]+0){t=a[x];a[x]=a[y];a[y]=t}
        med=(c%2)?a[(c+1)/2]:(a[c/2]+a[c/2+1])/2
        printf "  %-24s %8.3f %8.3f  %s\n", k[i], a[1], med, v[k[i]]}}'
if grep -q '^BENCHERR' "$work"/bench.* || awk '$1=="BENCH" && $4!="rc=0"{f=1} END{exit !f}' "$work"/bench.*; then
  echo "bench/update: some steps failed (see above)" >&2; exit 1
fi
