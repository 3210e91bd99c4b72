#!/usr/bin/env bash
# Boot a Berth disk image in QEMU (TCG; no KVM needed).
#
#   qemu/run.sh [--arch x86_64|arm64] [--headless] [--state-dir DIR] [--config FILE]
#               [--registry-port PORT] [--hostfwd HOSTPORT:GUESTPORT] [--disk-size SIZE]
#               [--guestfwd GUESTPORT:HOSTPORT]
#               [--mem MiB] [--no-reboot] [--hw virtio|ahci|nvme|usb] [--cidata FILE]
#               [--direct [--boot-files DIR]] [IMAGE]
#
# The image itself is never written: QEMU boots a copy-on-write overlay in the state dir.
# State dir contents: disk.qcow2 (overlay), efivars.fd, serial.log (headless), qmp.sock
# (QMP), osctl.sock (virtio-serial port org.berth.osctl: `osctl --connect
# unix:path=DIR/osctl.sock status`), qemu.pid.
#
# Interactive (default): the serial console is this terminal (Ctrl-A X quits QEMU).
# --headless: QEMU runs in the background, this script returns once it has started.
# --config FILE: passed to the guest via fw_cfg as opt/org.berth/config.
# --registry-port PORT: the guest reaches 127.0.0.1:PORT on this host as 10.0.2.100:5000.
# --hostfwd HOSTPORT:GUESTPORT: 127.0.0.1:HOSTPORT on this host reaches the guest's TCP
#   GUESTPORT (repeatable).
# --guestfwd GUESTPORT:HOSTPORT: the guest reaches 127.0.0.1:HOSTPORT on this host as
#   10.0.2.100:GUESTPORT over TCP (repeatable; through socat, so a connection the host
#   refuses is accepted and closed at once).
# --disk-size SIZE: virtual size of the overlay (e.g. 16G), to test growing the state.
# --cidata FILE: attach a small read-only vfat disk labelled CIDATA holding FILE as
#   berth.toml (the cloud-init NoCloud-style datasource; read at first boot).
# --hw KIND: the emulated hardware (x86_64). virtio (default): virtio disk, NIC and
#   virtio-serial osctl port. The others have no virtio device at all, like a bare-metal
#   machine (boot the metal image, `make image PROFILE=metal`): ahci = SATA disk on an AHCI
#   controller + e1000e NIC; nvme = NVMe disk + e1000 NIC; usb = USB stick (usb-storage on
#   xhci) + e1000e NIC. osctl.sock is then the second UART (ttyS1 in the guest,
#   `berth.osctl=ttyS1` on the metal command line); on arm64 (one PL011) it stays on
#   virtio-serial. fw_cfg is not virtio and stays.
# --direct: boot slot A's kernel and initrd directly (QEMU -kernel/-initrd/-append with the
#   boot entry's command line), without UEFI firmware or systemd-boot: the same root, init
#   and services, at `berth: ready` in 5-8 s under TCG instead of 11-12 s. Files: --boot-files DIR
#   (default: the `direct/` dir `make image` writes next to the image). Boot counting,
#   slot switches and updates need the firmware lane (the default).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
arch=x86_64 headless=0 state= config= regport= hostfwd= guestfwd= disksize= mem=1024 noreboot=0 image= hw=virtio cidata= direct=0 bootfiles=
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --headless) headless=1; shift ;;
    --state-dir) state=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --registry-port) regport=$2; shift 2 ;;
    --hostfwd) hostfwd="$hostfwd $2"; shift 2 ;;
    --guestfwd) guestfwd="$guestfwd $2"; shift 2 ;;
    --disk-size) disksize=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --no-reboot) noreboot=1; shift ;;
    --hw) hw=$2; shift 2 ;;
    --cidata) cidata=$2; shift 2 ;;
    --direct) direct=1; shift ;;
    --boot-files) bootfiles=$2; shift 2 ;;
    -h|--help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) image=$1; shift ;;
  esac
done
case "$hw" in
  virtio|ahci|nvme|usb) ;;
  *) echo "run.sh: unknown --hw $hw (virtio, ahci, nvme or usb)" >&2; exit 2 ;;
esac

image=${image:-$here/../build/$arch/berth.img}
[ -f "$image" ] || { echo "run.sh: no image at $image (run 'make image ARCH=$arch')" >&2; exit 1; }
image=$(cd "$(dirname "$image")" && pwd)/$(basename "$image")
state=${state:-$here/../build/$arch/run}
mkdir -p "$state"
state=$(cd "$state" && pwd)
if [ -f "$state/qemu.pid" ] && kill -0 "$(cat "$state/qemu.pid")" 2>/dev/null; then
  echo "run.sh: a VM is already running with state dir $state (pid $(cat "$state/qemu.pid"))" >&2
  exit 1
fi
rm -f "$state/qmp.sock" "$state/osctl.sock" "$state/qemu.pid"

case "$arch" in
  x86_64)
    qemu=qemu-system-x86_64
    machine=(-M q35 -cpu max)
    code=/usr/share/OVMF/OVMF_CODE_4M.fd vars=/usr/share/OVMF/OVMF_VARS_4M.fd ;;
  arm64)
    qemu=qemu-system-aarch64
    # virtio-rng: cortex-a57 has no RNG instruction; without a host entropy source the
    # guest kernel's RNG stays uninitialised and getrandom() blocks (x86_64's -cpu max has
    # RDRAND).
    machine=(-M virt -cpu cortex-a57 -device virtio-rng-pci)
    code=/usr/share/AAVMF/AAVMF_CODE.fd vars=/usr/share/AAVMF/AAVMF_VARS.fd ;;
  *) echo "run.sh: unknown arch $arch (x86_64 or arm64)" >&2; exit 2 ;;
esac
# Every tool this script uses, checked before anything starts, with the Debian package that
# brings it (`make deps` installs them all).
if [ "$arch" = x86_64 ]; then qemu_pkg=qemu-system-x86 fw_pkg=ovmf; else qemu_pkg=qemu-system-arm fw_pkg=qemu-efi-aarch64; fi
need=("$qemu:$qemu_pkg" "qemu-img:qemu-utils")
[ "$direct" = 0 ] && need+=("$code:$fw_pkg" "$vars:$fw_pkg")
[ -n "$regport$guestfwd" ] && need+=("socat:socat")
[ -n "$cidata" ] && need+=("mkfs.vfat:dosfstools" "mcopy:mtools")
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for n in "${need[@]}"; do
  what=${n%%:*} pkg=${n##*:}
  case "$what" in
    /*) [ -e "$what" ] ;;
    *) command -v "$what" >/dev/null ;;
  esac || missing+=("$what (Debian package $pkg)")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "run.sh: missing: ${missing[*]}" >&2
  echo "run.sh: install with 'make deps$( [ "$arch" = arm64 ] && echo ' ARCH=arm64')' (or apt-get install the packages named)" >&2
  exit 1
fi

# A fresh overlay unless one for this image is already there (keeps /var across runs).
if [ ! -f "$state/disk.qcow2" ] || [ "$(cat "$state/disk.base" 2>/dev/null)" != "$image" ]; then
  qemu-img create -q -f qcow2 -F raw -b "$image" "$state/disk.qcow2" ${disksize:+"$disksize"}
  echo "$image" > "$state/disk.base"
  rm -f "$state/efivars.fd"
fi
[ "$direct" = 0 ] && [ ! -f "$state/efivars.fd" ] && cp "$vars" "$state/efivars.fd"

net="user,id=n0,restrict=on"
[ -n "$regport" ] && net="$net,guestfwd=tcp:10.0.2.100:5000-cmd:socat - TCP:127.0.0.1:$regport"
for f in $guestfwd; do net="$net,guestfwd=tcp:10.0.2.100:${f%%:*}-cmd:socat - TCP:127.0.0.1:${f##*:}"; done
for f in $hostfwd; do net="$net,hostfwd=tcp:127.0.0.1:${f%%:*}-:${f##*:}"; done

args=(
  -accel tcg "${machine[@]}" -m "$mem" -smp 2
  -netdev "$net"
  -chardev "socket,id=osctl,path=$state/osctl.sock,server=on,wait=off"
  -qmp "unix:$state/qmp.sock,server=on,wait=off"
  -pidfile "$state/qemu.pid"
)
if [ "$direct" = 1 ]; then
  bootfiles=${bootfiles:-$(dirname "$image")/direct}
  for f in vmlinuz initrd.img cmdline; do
    [ -f "$bootfiles/$f" ] || { echo "run.sh: --direct needs $bootfiles/$f (made by 'make image'; or name the dir with --boot-files)" >&2; exit 1; }
  done
  args+=(-kernel "$bootfiles/vmlinuz" -initrd "$bootfiles/initrd.img" -append "$(cat "$bootfiles/cmdline")")
else
  args+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$code"
         -drive "if=pflash,format=raw,unit=1,file=$state/efivars.fd")
fi
disk="file=$state/disk.qcow2,format=qcow2"
# With -kernel, QEMU's own boot ROM takes bootindex 0.
bi=",bootindex=0"; [ "$direct" = 1 ] && bi=
# The disk boots first (bootindex 0: the firmware never tries a CIDATA disk or the network
# before it). Non-virtio NICs get no option ROM (no PXE attempt in the firmware).
case "$hw" in
  virtio)
    args+=(-drive "$disk,if=none,id=d0" -device virtio-blk-pci,drive=d0$bi
           -device virtio-net-pci,netdev=n0
           -device virtio-serial-pci -device virtserialport,chardev=osctl,name=org.berth.osctl) ;;
  ahci)
    args+=(-drive "$disk,if=none,id=d0" -device ahci,id=ahci0
           -device ide-hd,drive=d0,bus=ahci0.0$bi
           -device e1000e,netdev=n0,romfile=) ;;
  nvme)
    args+=(-drive "$disk,if=none,id=d0" -device nvme,drive=d0,serial=berth0001$bi
           -device e1000,netdev=n0,romfile=) ;;
  usb)
    args+=(-drive "$disk,if=none,id=d0" -device qemu-xhci,id=xhci0
           -device usb-storage,drive=d0,bus=xhci0.0,removable=on$bi
           -device e1000e,netdev=n0,romfile=) ;;
esac
# The CIDATA disk after the system disk (the system disk stays vda / the first one).
if [ -n "$cidata" ]; then
  [ -f "$cidata" ] || { echo "run.sh: no file $cidata for --cidata" >&2; exit 1; }
  rm -f "$state/cidata.img"
  mkfs.vfat -n CIDATA -C "$state/cidata.img" 1024 >/dev/null
  mcopy -i "$state/cidata.img" "$cidata" ::berth.toml
  args+=(-drive "file=$state/cidata.img,format=raw,if=none,id=cidata,readonly=on"
         -device virtio-blk-pci,drive=cidata)
fi
# Without virtio-serial the osctl channel is the second UART (after the console's).
osctl_serial=()
if [ "$hw" != virtio ]; then
  if [ "$arch" = x86_64 ]; then
    osctl_serial=(-serial chardev:osctl)
  else
    # QEMU's arm64 virt machine has a single PL011: osctl goes over virtio-serial there.
    args+=(-device virtio-serial-pci -device virtserialport,chardev=osctl,name=org.berth.osctl)
  fi
fi
[ -n "$config" ] && args+=(-fw_cfg "name=opt/org.berth/config,file=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")")
[ "$noreboot" = 1 ] && args+=(-no-reboot)

if [ "$headless" = 1 ]; then
  : > "$state/serial.log"
  exec "$qemu" "${args[@]}" -display none -serial "file:$state/serial.log" "${osctl_serial[@]}" -daemonize
else
  echo "Berth on $arch: serial console below (Ctrl-A X quits). From another terminal:"
  echo "  osctl --connect unix:path=$state/osctl.sock status"
  exec "$qemu" "${args[@]}" -nographic -serial mon:stdio "${osctl_serial[@]}"
fi
