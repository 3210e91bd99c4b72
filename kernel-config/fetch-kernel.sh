#!/usr/bin/env bash
# Fetch Berth's boot chain from Debian into a build folder, never touching the host's /boot:
# the kernel and its modules, the systemd-boot EFI loader of the same architecture, and
# the Debian packages of that architecture the system container images are built from.
#   kernel-config/fetch-kernel.sh ARCH OUTDIR [FLAVOUR]
# ARCH: x86_64 | arm64. FLAVOUR: cloud (default, virtio-only) | generic (bare metal).
# Result: OUTDIR/vmlinuz, OUTDIR/lib/modules/<version>/..., OUTDIR/version,
#         OUTDIR/systemd-boot.efi, OUTDIR/busybox (busybox-static, the admin image),
#         OUTDIR/debs/{openntpd,libc6}/ (unpacked .debs, the ntpd image).
# Each part is fetched only when missing.
set -euo pipefail
arch=${1:?arch}; out=${2:?outdir}; flavour=${3:-cloud}
case "$arch" in
  x86_64) darch=amd64 efi=systemd-bootx64.efi ;;
  arm64) darch=arm64 efi=systemd-bootaa64.efi ;;
  *) echo "fetch-kernel: unknown arch '$arch' (x86_64 or arm64)" >&2; exit 2 ;;
esac
case "$flavour" in
  cloud) meta=linux-image-cloud-$darch ;;
  generic) meta=linux-image-$darch ;;
  *) echo "fetch-kernel: unknown flavour '$flavour' (cloud or generic)" >&2; exit 2 ;;
esac
mkdir -p "$out"
out=$(cd "$out" && pwd)
have_kernel() { [ -f "$out/version" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/systemd-boot.efi" ]; }
have_sysimage() { [ -f "$out/busybox" ] && [ -f "$out/debs/openntpd/usr/sbin/ntpd" ] && [ -d "$out/debs/libc6/lib" ]; }
if have_kernel && have_sysimage; then exit 0; fi
apt_opts=()
if [ "$darch" != "$(dpkg --print-architecture)" ]; then
  # Private apt state so the host's dpkg configuration stays untouched.
  st="$out/.apt"; mkdir -p "$st/lists/partial" "$st/cache/archives/partial"; touch "$st/status"
  apt_opts=(-o "Dir::State::Lists=$st/lists" -o "Dir::Cache=$st/cache" -o "Dir::State::status=$st/status"
            -o "APT::Architecture=$darch" -o "APT::Architectures::=$darch")
  apt-get "${apt_opts[@]}" update -qq
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# download PKG: the .deb of the target architecture into $tmp.
download() { (cd "$tmp" && { apt-get "${apt_opts[@]}" download -qq "$1:$darch" 2>/dev/null || apt-get "${apt_opts[@]}" download -qq "$1"; }); }
if ! have_kernel; then
  pkg=$(apt-cache "${apt_opts[@]}" depends "$meta" | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || { echo "fetch-kernel: cannot resolve $meta (run apt-get update?)" >&2; exit 1; }
  (cd "$tmp" && apt-get "${apt_opts[@]}" download -qq "$pkg:$darch" 2>/dev/null || apt-get "${apt_opts[@]}" download -qq "$pkg")
  dpkg -x "$tmp"/*.deb "$tmp/root"
  version=${pkg#linux-image-}
  cp "$tmp/root/boot/vmlinuz-$version" "$out/vmlinuz"
  rm -rf "$out/lib"; mkdir -p "$out/lib/modules"
  cp -a "$tmp/root/lib/modules/$version" "$out/lib/modules/"
  if [ ! -f "$out/lib/modules/$version/modules.dep" ]; then
    # The arm64 package ships without modules.dep.
    depmod -b "$out" "$version"
  fi
  [ -f "$out/lib/modules/$version/modules.dep" ] || { echo "fetch-kernel: no modules.dep for $version" >&2; exit 1; }
  # systemd-boot of the same architecture (Debian's systemd-boot-efi).
  (cd "$tmp" && apt-get "${apt_opts[@]}" download -qq "systemd-boot-efi:$darch" 2>/dev/null || apt-get "${apt_opts[@]}" download -qq systemd-boot-efi)
  dpkg -x "$tmp"/systemd-boot-efi_*.deb "$tmp/sdboot"
  cp "$tmp/sdboot/usr/lib/systemd/boot/efi/$efi" "$out/systemd-boot.efi"
  echo "$version" > "$out/version"
  echo "fetch-kernel: $pkg -> $out"
fi
if ! have_sysimage; then
  # busybox-static (admin image); openntpd and the C library it links (ntpd image).
  for p in busybox-static openntpd libc6; do download "$p"; done
  dpkg -x "$tmp"/busybox-static_*.deb "$tmp/busybox"
  cp "$tmp/busybox/bin/busybox" "$out/busybox"
  rm -rf "$out/debs"; mkdir -p "$out/debs"
  dpkg -x "$tmp"/openntpd_*.deb "$out/debs/openntpd"
  dpkg -x "$tmp"/libc6_*.deb "$out/debs/libc6"
  echo "fetch-kernel: busybox-static openntpd libc6 ($darch) -> $out"
fi
