#!/bin/bash
# Build the bootable test guest for elastic-vhost: a Debian cloud kernel plus
# a small busybox/iperf3/udpburst/evagent initramfs. Everything comes from Debian
# packages (apt) and from sources kept in guests/.
#
# Output (cached, idempotent):  build/guest/vmlinuz  build/guest/initramfs.cpio.gz
#
# Usage: guests/build.sh [--force]
#   --force        rebuild the initramfs even if the inputs did not change
#   env KERNEL_PKG override the kernel metapackage (default linux-image-cloud-amd64)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/guests"
OUT="$ROOT/build/guest"
KERNEL_PKG="${KERNEL_PKG:-linux-image-cloud-amd64}"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

# Modules needed for virtio-net (+ ACPI power button for QMP system_powerdown).
WANT_MODULES="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net button evdev"

log() { echo "[guests/build] $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ---------------------------------------------------------------- host packages
ensure_packages() {
  local missing=() p
  for p in qemu-system-x86 busybox-static iperf3 cpio gcc libc6-dev tcpdump ethtool; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing missing packages: ${missing[*]}"
    # Another apt/dpkg may be running: wait for the lock instead of failing.
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}"
  fi
}

# ---------------------------------------------------------------- kernel
# Resolves the metapackage to the versioned linux-image-<ver>-cloud-amd64
# package, downloads it (never installs it) and extracts it under build/guest.
ensure_kernel() {
  mkdir -p "$OUT/debs"
  local real
  if ! apt-cache show "$KERNEL_PKG" >/dev/null 2>&1; then
    log "no apt lists for $KERNEL_PKG: apt-get update"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q
  fi
  real="$(apt-cache depends "$KERNEL_PKG" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
  if [ -z "$real" ]; then
    # Maybe KERNEL_PKG is already a versioned package.
    real="$KERNEL_PKG"
  fi
  KVER="${real#linux-image-}"
  KROOT="$OUT/kernel-$KVER"
  if [ -f "$KROOT/.extracted" ]; then
    return
  fi
  log "downloading $real"
  rm -f "$OUT/debs/${real}_"*.deb
  (cd "$OUT/debs" && apt-get download -q "$real" 2> >(grep -v 'Download is performed unsandboxed' >&2))
  local deb
  deb="$(ls "$OUT/debs/${real}_"*.deb | head -1)"
  # (list into a variable: `dpkg-deb -c | grep -q` fails under pipefail when grep stops early)
  local listing
  listing="$(dpkg-deb -c "$deb")"
  case "$listing" in
    *boot/vmlinuz-*) ;;
    *) echo "$deb has no kernel image" >&2; exit 1 ;;
  esac
  rm -rf "$KROOT"
  mkdir -p "$KROOT"
  dpkg-deb -x "$deb" "$KROOT"
  touch "$KROOT/.extracted"
  # Keep only one kernel deb around.
  rm -f "$deb"
}

# modinfo-free dependency lookup: read the "depends=" entry of .modinfo.
mod_path() { # name -> path of the .ko[.xz|.zst|.gz]
  local n="$1"
  local alt="${n//_/-}"
  find "$KROOT/lib/modules/$KVER/kernel" \( -name "$n.ko*" -o -name "$alt.ko*" \) -print -quit
}

mod_plain() { # path -> uncompressed module file (in a temp dir) printed
  local p="$1" tmp="$WORK/ko"
  mkdir -p "$tmp"
  local base; base="$(basename "$p")"
  case "$p" in
    *.ko) cp "$p" "$tmp/$base"; echo "$tmp/$base" ;;
    *.ko.xz) xz -dc "$p" > "$tmp/${base%.xz}"; echo "$tmp/${base%.xz}" ;;
    *.ko.zst) zstd -qdc "$p" > "$tmp/${base%.zst}"; echo "$tmp/${base%.zst}" ;;
    *.ko.gz) gzip -dc "$p" > "$tmp/${base%.gz}"; echo "$tmp/${base%.gz}" ;;
    *) echo "unknown module format $p" >&2; return 1 ;;
  esac
}

mod_deps() { # plain .ko -> dependency names, one per line
  tr '\0' '\n' < "$1" | sed -n 's/^depends=//p' | tr ',' '\n' | sed '/^$/d'
}

declare -A MOD_DONE=()
MOD_ORDER=()
add_module() { # name: add with its dependencies first (post-order DFS)
  local n="${1//-/_}"
  [ -n "${MOD_DONE[$n]:-}" ] && return 0
  MOD_DONE[$n]=1
  if grep -qE "/${n}\.ko$|/${n//_/-}\.ko$" "$KROOT/lib/modules/$KVER/modules.builtin" 2>/dev/null; then
    log "module $n is built in"
    return 0
  fi
  local p; p="$(mod_path "$n")"
  if [ -z "$p" ]; then
    log "module $n does not exist in $KVER (skipped)"
    return 0
  fi
  local plain d; plain="$(mod_plain "$p")"
  for d in $(mod_deps "$plain"); do add_module "$d"; done
  MOD_ORDER+=("$plain")
}

copy_with_libs() { # binary -> copy it plus its shared libraries into $IRD
  local bin="$1" dest="$2"
  install -D -m 0755 "$bin" "$IRD$dest"
  local lib
  for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    # Copy the real file but keep the path the loader asks for.
    mkdir -p "$IRD$(dirname "$lib")"
    cp -L "$lib" "$IRD$lib"
  done
}

# ---------------------------------------------------------------- main
ensure_packages
ensure_kernel

STAMP_INPUTS="$(cat "$SRC/build.sh" "$SRC/init.sh" "$SRC"/tools/*.c | sha256sum | cut -c1-16)"
STAMP="$KVER $STAMP_INPUTS $(dpkg-query -W -f='${Version}' busybox-static iperf3 ethtool)"
if [ "$FORCE" = 0 ] && [ -f "$OUT/initramfs.cpio.gz" ] && [ -f "$OUT/vmlinuz" ] \
   && [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "up to date ($OUT)"
  exit 0
fi

t0=$(date +%s)
WORK="$(mktemp -d "$OUT/work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
IRD="$WORK/root"
mkdir -p "$IRD"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,root,lib/modules,var/log}

# busybox + applet links
install -m 0755 /bin/busybox "$IRD/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] && continue
  [ -e "$IRD/bin/$a" ] || ln -s busybox "$IRD/bin/$a"
done

# iperf3 with its libraries and the dynamic loader
copy_with_libs "$(command -v iperf3)" /usr/bin/iperf3

# sanity: the copied iperf3 must run inside the tree (loader + libs present)
chroot "$IRD" /usr/bin/iperf3 --version >/dev/null \
  || { echo "iperf3 does not run inside the initramfs tree" >&2; exit 1; }

# ethtool (queue counts with -L, per-queue statistics with -S)
copy_with_libs "$(command -v ethtool || echo /usr/sbin/ethtool)" /usr/sbin/ethtool
chroot "$IRD" /usr/sbin/ethtool --version >/dev/null \
  || { echo "ethtool does not run inside the initramfs tree" >&2; exit 1; }

# udpburst (static)
gcc -static -O2 -Wall -Wextra -o "$IRD/usr/bin/udpburst" "$SRC/tools/udpburst.c"
strip "$IRD/usr/bin/udpburst"

# evagent: the ttyS1 command agent (static)
gcc -static -O2 -Wall -Wextra -o "$IRD/usr/bin/evagent" "$SRC/tools/evagent.c"
strip "$IRD/usr/bin/evagent"

# kernel modules, in load order
for m in $WANT_MODULES; do add_module "$m"; done
: > "$IRD/lib/modules/load-order"
for p in "${MOD_ORDER[@]}"; do
  install -m 0644 "$p" "$IRD/lib/modules/$(basename "$p")"
  echo "$(basename "$p")" >> "$IRD/lib/modules/load-order"
done
log "modules: $(tr '\n' ' ' < "$IRD/lib/modules/load-order")"

# /init and minimal /etc
install -m 0755 "$SRC/init.sh" "$IRD/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$IRD/etc/passwd"
echo "root:x:0:" > "$IRD/etc/group"
printf '127.0.0.1 localhost\n' > "$IRD/etc/hosts"
echo "$KVER" > "$IRD/etc/ev-kernel"

# kernel image
cp "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz.new"
mv "$OUT/vmlinuz.new" "$OUT/vmlinuz"

(cd "$IRD" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
  | gzip -9 > "$OUT/initramfs.cpio.gz.new"
mv "$OUT/initramfs.cpio.gz.new" "$OUT/initramfs.cpio.gz"
echo "$STAMP" > "$OUT/.stamp"

log "built in $(( $(date +%s) - t0 ))s: $(du -h "$OUT/vmlinuz" | cut -f1) vmlinuz, $(du -h "$OUT/initramfs.cpio.gz" | cut -f1) initramfs ($KVER)"
