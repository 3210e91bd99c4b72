#!/usr/bin/env bash
# Installs what building, booting and testing Berth need, then checks it by the commands
# and files themselves, not by package status: installing one Debian package can remove
# another (a backported qemu-utils is removed as a version conflict when Debian 12's
# qemu-system-x86 is installed), so a check made before installing proves nothing.
#
#   scripts/deps.sh [x86_64|arm64]     (`make deps`, `make deps ARCH=arm64`)
#   scripts/deps.sh --check [ARCH]     only check; exit 1 naming what is missing
#
# Every line of the tables below is "command-or-absolute-path package".
set -euo pipefail

check_only=0
if [ "${1:-}" = --check ]; then check_only=1; shift; fi
arch=${1:-x86_64}

# Build (image), boot (QEMU + firmware) and test tools, x86_64 host.
NEEDS=(
  "qemu-system-x86_64 qemu-system-x86"
  "qemu-img qemu-utils"
  "/usr/share/OVMF/OVMF_CODE_4M.fd ovmf"
  "/usr/share/OVMF/OVMF_VARS_4M.fd ovmf"
  "/usr/lib/systemd/boot/efi/systemd-bootx64.efi systemd-boot-efi"
  "mkfs.erofs erofs-utils"
  "mkfs.vfat dosfstools"
  "mcopy mtools"
  "mmd mtools"
  "sfdisk fdisk"
  "sgdisk gdisk"
  "mkfs.ext4 e2fsprogs"
  "veritysetup cryptsetup-bin"
  "/bin/busybox busybox-static"
  "socat socat"
  "depmod kmod"
  "cpio cpio"
  "docker-registry docker-registry"
  "skopeo skopeo"
  "umoci umoci"
  "htpasswd apache2-utils"
  "dnsmasq dnsmasq-base"
  "ip iproute2"
  "runc runc"
  "crun crun"
  "script bsdutils"
  "pkill procps"
  "etcd etcd-server"
  "etcdctl etcd-client"
  "protoc protobuf-compiler"
  "rsyslogd rsyslog"
  "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so rsyslog-gnutls"
  "promtool prometheus"
  "prometheus prometheus"
)
# The arm64 image: Debian's cross toolchain and arm64 std, QEMU for aarch64 with AAVMF.
NEEDS_ARM64=(
  "qemu-system-aarch64 qemu-system-arm"
  "/usr/share/AAVMF/AAVMF_CODE.fd qemu-efi-aarch64"
  "/usr/share/AAVMF/AAVMF_VARS.fd qemu-efi-aarch64"
  "/usr/bin/rustc rustc-web"
  "/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib libstd-rust-web-dev:arm64"
  "aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu"
  "/usr/aarch64-linux-gnu/lib/libc.a libc6-dev-arm64-cross"
)

needs=("${NEEDS[@]}")
case "$arch" in
  x86_64) ;;
  arm64) needs+=("${NEEDS_ARM64[@]}") ;;
  *) echo "deps: unknown arch $arch (x86_64 or arm64)" >&2; exit 2 ;;
esac

# Tools in sbin are found whoever runs this (sudo keeps a user's PATH).
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
have() {
  case "$1" in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}
# Prints "package" for every missing command or file, once per package, in table order.
missing_packages() {
  local line what pkg seen=" "
  for line in "${needs[@]}"; do
    what=${line%% *} pkg=${line##* }
    if ! have "$what" && [[ "$seen" != *" $pkg "* ]]; then
      seen="$seen$pkg "
      echo "$pkg"
    fi
  done
}
# Prints "  what (package)" for everything still missing.
missing_report() {
  local line what pkg
  for line in "${needs[@]}"; do
    what=${line%% *} pkg=${line##* }
    have "$what" || echo "  $what (Debian package $pkg)"
  done
}

if [ "$check_only" = 1 ]; then
  report=$(missing_report)
  [ -z "$report" ] && exit 0
  echo "deps: missing:" >&2
  echo "$report" >&2
  echo "deps: run 'make deps${arch:+ ARCH=$arch}' to install them" >&2
  exit 1
fi

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
apt_install() {
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

if [ "$arch" = arm64 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "deps: enabling the arm64 package architecture"
  $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
fi

# Up to three rounds: install what is missing, then look again, since one install can
# remove what an earlier one brought (the round after puts it back, and apt then keeps
# both or says why it cannot).
updated=0
for round in 1 2 3; do
  mapfile -t pkgs < <(missing_packages)
  [ "${#pkgs[@]}" = 0 ] && break
  echo "deps: installing ${pkgs[*]} (round $round)"
  if [ "$updated" = 0 ]; then $SUDO apt-get update -qq; updated=1; fi
  # A package dpkg still lists as installed but whose files are gone needs --reinstall.
  apt_install "${pkgs[@]}" || true
  mapfile -t again < <(missing_packages)
  if [ "${#again[@]}" -gt 0 ]; then
    apt_install --reinstall "${again[@]}" || true
  fi
done

report=$(missing_report)
if [ -n "$report" ]; then
  echo "deps: still missing after installing (apt may have removed one package while installing another; see its output above):" >&2
  echo "$report" >&2
  exit 1
fi
echo "deps: every command and file the $arch build, boot and tests need is present"
