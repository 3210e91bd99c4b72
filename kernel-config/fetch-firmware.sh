#!/usr/bin/env bash
# Fetch Debian firmware packages for the metal profile into a build folder, never touching
# the host: a private apt state with Debian's non-free-firmware component (its packages are
# all redistributable), `apt-get download`, `dpkg -x`.
#   kernel-config/fetch-firmware.sh OUTDIR PACKAGE...
# Result: OUTDIR/lib/firmware/..., OUTDIR/packages (name version, one a line), and each
# package's licence under OUTDIR/copyright/<package>. berth-image copies into the initramfs
# only the files that the selected modules name (modinfo firmware=).
set -euo pipefail
out=${1:?outdir}; shift
[ $# -gt 0 ] || { echo "fetch-firmware: no packages given" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
want="$*"
if [ -f "$out/packages" ] && [ "$(cut -d' ' -f1 "$out/packages" | xargs)" = "$want" ]; then exit 0; fi
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
st="$out/.apt"
mkdir -p "$st/lists/partial" "$st/cache/archives/partial"; touch "$st/status"
echo "deb http://deb.debian.org/debian $codename non-free-firmware" > "$st/sources.list"
opts=(-o "Dir::State::Lists=$st/lists" -o "Dir::Cache=$st/cache" -o "Dir::State::status=$st/status"
      -o "Dir::Etc::SourceList=$st/sources.list" -o "Dir::Etc::SourceParts=-")
apt-get "${opts[@]}" update -qq
tmp=$(mktemp -d); chmod 755 "$tmp"; trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get "${opts[@]}" download -qq "$@")
rm -rf "$out/lib" "$out/copyright"; mkdir -p "$out/lib/firmware" "$out/copyright"
: > "$out/packages.tmp"
for p in "$@"; do
  deb=$(ls "$tmp"/"${p}"_*.deb)
  dpkg -x "$deb" "$tmp/root-$p"
  cp -a "$tmp/root-$p/lib/firmware/." "$out/lib/firmware/"
  cp "$tmp/root-$p/usr/share/doc/$p/copyright" "$out/copyright/$p"
  echo "$p $(dpkg-deb -f "$deb" Version)" >> "$out/packages.tmp"
done
mv "$out/packages.tmp" "$out/packages"
echo "fetch-firmware: $want -> $out"
