#!/usr/bin/env bash
# Prepare the emulated aarch64 executor (make arm-emulator, toolchain arm-emulator): an arm64 Debian userland run
# by qemu-user (no binfmt_misc needed), aarch64 wheels of LiteRT and numpy at the lock's versions, and the qemu
# instruction-count plugin (the ARM cost model). Idempotent: every step keeps a stamp and is skipped when its
# inputs are unchanged.
#
#   setup_arm_emulator.sh DEST HOST_PYTHON LOCKFILE
#
# Exit status 2: Debian packages are missing and this is not root (nothing was changed); any other failure: 1.
# The wheel ships this script, insn_marker.c, apt_sources.py and the lock (toolchain/executors/requirements.lock).
#
# Packages come from the mirror this machine's apt is configured with (read from /etc/apt/sources.list*).
set -euo pipefail

DEST=$(realpath -m "$1")
PY=$2
LOCK=$3
HERE=$(cd "$(dirname "$0")" && pwd)
log() { echo "arm-emulator: $*" >&2; }
mkdir -p "$DEST"

# ---- Debian packages: qemu-user-static (runs the userland), qemu-user (dynamic: the only one accepting -plugin),
# debootstrap, a compiler and glib headers for the plugin, openssh-server (the ssh executor's tests).
PACKAGES="qemu-user-static qemu-user debootstrap binutils xz-utils gcc libc6-dev pkg-config libglib2.0-dev openssh-server"
missing=()
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        log "missing Debian packages (${missing[*]}) and not root: install them as root (apt-get install ${missing[*]}) or run this setup as root"
        exit 2
    fi
    log "installing ${missing[*]}"
    # Package scripts must not start services (an sshd on port 22): a policy-rc.d, only if none is there.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 \
        "${missing[@]}"
fi

CODENAME=$(. /etc/os-release && echo "$VERSION_CODENAME")
MIRROR=$("$PY" "$HERE/apt_sources.py" mirror "$CODENAME")

# ---- rootfs: debootstrap's first stage fetches the debs; each is unpacked with dpkg -x (no second stage: that
# would need to run arm64 maintainer scripts).
ROOTFS=$DEST/rootfs
if [ ! -f "$ROOTFS/.toolchain-done" ]; then
    log "building the arm64 $CODENAME rootfs"
    rm -rf "$ROOTFS.tmp"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3.11,libpython3.11 \
        "$CODENAME" "$ROOTFS.tmp" "$MIRROR" >"$DEST/debootstrap.log" 2>&1 \
        || { tail -20 "$DEST/debootstrap.log" >&2; exit 1; }
    for deb in "$ROOTFS.tmp"/var/cache/apt/archives/*.deb; do
        dpkg -x "$deb" "$ROOTFS.tmp"
    done
    rm -f "$ROOTFS.tmp"/var/cache/apt/archives/*.deb
    # The first emulated import would compile the stdlib (slowly): bytecode is the same on every arch.
    "$PY" -m compileall -q "$ROOTFS.tmp/usr/lib/python3.11" >/dev/null 2>&1 || true
    test -x "$ROOTFS.tmp/usr/bin/python3.11"
    touch "$ROOTFS.tmp/.toolchain-done"
    mv "$ROOTFS.tmp" "$ROOTFS"
fi

# ---- aarch64 wheels at the lock's versions (ai-edge-litert 2.1.0 is tagged manylinux_2_27 only).
pin() { grep -i "^$1==" "$LOCK" | head -1 | cut -d= -f3; }
LITERT=$(pin ai-edge-litert)
NUMPY=$(pin numpy)
SITE=$DEST/site
WANT="ai-edge-litert==$LITERT numpy==$NUMPY lock $(sha256sum "$LOCK" | cut -c1-16)"
if [ "$(cat "$SITE/.toolchain-done" 2>/dev/null)" != "$WANT" ]; then
    log "installing aarch64 wheels: $WANT"
    rm -rf "$SITE.tmp"
    "$PY" -m pip install -q --target "$SITE.tmp" --only-binary=:all: \
        --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        --python-version 3.11 --implementation cp --abi cp311 -c "$LOCK" "ai-edge-litert==$LITERT" "numpy==$NUMPY"
    "$PY" -m compileall -q "$SITE.tmp" >/dev/null 2>&1 || true
    echo "$WANT" > "$SITE.tmp/.toolchain-done"
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
fi

# ---- the instruction-count plugin, built against qemu-plugin.h of the qemu source matching qemu-user (fetched
# with a private apt configuration holding deb-src lines derived from this machine's sources; apt's own
# configuration is not touched).
PLUGIN=$DEST/plugin
QVER=$(dpkg-query -W -f='${source:Version}' qemu-user)
PWANT="$QVER $(sha256sum "$HERE/insn_marker.c" | cut -d' ' -f1)"
if [ "$(cat "$PLUGIN/.toolchain-done" 2>/dev/null)" != "$PWANT" ]; then
    log "building the instruction-count plugin for qemu $QVER"
    APT=$DEST/apt
    mkdir -p "$APT/lists/partial" "$APT/parts" "$APT/src" "$PLUGIN"
    "$PY" "$HERE/apt_sources.py" deb-src "$CODENAME" > "$APT/sources.list"
    APTOPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=$APT/parts"
             -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -q)
    mkdir -p "$APT/cache/archives/partial"
    apt-get "${APTOPTS[@]}" update >"$APT/update.log" 2>&1 || { tail -20 "$APT/update.log" >&2; exit 1; }
    (cd "$APT/src" && apt-get "${APTOPTS[@]}" source --download-only "qemu=$QVER" >"$APT/source.log" 2>&1) \
        || { tail -20 "$APT/source.log" >&2; exit 1; }
    orig=$(ls "$APT/src"/qemu_*.orig.tar.* | head -1)
    tar -xf "$orig" -C "$APT/src" --wildcards '*/include/qemu/qemu-plugin.h'
    header=$(ls "$APT/src"/*/include/qemu/qemu-plugin.h | head -1)
    gcc -O2 -shared -fPIC -Wall -o "$PLUGIN/libinsn_marker.so" "$HERE/insn_marker.c" -I"$(dirname "$header")" \
        $(pkg-config --cflags --libs glib-2.0)
    rm -rf "$APT/src" "$APT/cache"
    echo "$PWANT" > "$PLUGIN/.toolchain-done"
fi

# What the executor records as its identity (the validate key and the report); replaced in one step, so a build
# reading it meanwhile never sees it half-written.
cat > "$DEST/ready.json.tmp" <<EOF
{"qemu": "$QVER", "debian": "$CODENAME $(cat "$ROOTFS/etc/debian_version")",
 "python": "$(ls "$ROOTFS/usr/bin" | grep -E '^python3\.[0-9]+$' | head -1)",
 "ai-edge-litert": "$LITERT", "numpy": "$NUMPY"}
EOF
mv -f "$DEST/ready.json.tmp" "$DEST/ready.json"
log "ready in $DEST"
