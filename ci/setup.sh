#!/bin/bash
# Prepare a Debian bookworm machine (run as root) for the end-to-end tests:
#   1. install the apt packages the harness and the build need;
#   2. fetch the newest Debian 6.12 cloud kernel and extract, decompressed, its
#      vmlinuz and the modules the test guest loads (see GUEST_MODULES).
# Idempotent: packages already present and a kernel already extracted are left alone.
# Needs root only to install packages.
#
# Result: ci/work/kernel/current -> <kernel version>/ holding
#   vmlinuz            the kernel that guest.sh boots under qemu TCG
#   modules/*.ko       decompressed modules (insmod cannot read .ko.xz without kmod)
#   modules.load       their file names, in the order they must be insmod'ed
#   modules.builtin    copied from the package, for reference
set -euo pipefail

CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KERNEL_DIR="$CI_DIR/work/kernel"

# qemu-system-x86: the guest; busybox-static + cpio: its initramfs; fio, e2fsprogs: the
# tests; libclang-dev: bindgen in libublk's build; zstd, xz-utils, kmod: unpacking modules
# and resolving their dependencies; g++: libFuzzer, which cargo fuzz builds from C++.
PACKAGES=(qemu-system-x86 busybox-static cpio fio e2fsprogs libclang-dev zstd xz-utils kmod g++)

# Modules the guest needs. Whatever of these (and of their dependencies) is built into the
# kernel is skipped; the rest is extracted. ext4 is listed although the Debian cloud kernel
# has it built in, so a kernel where it is a module still works.
GUEST_MODULES=(ublk_drv loop ext4)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_update() {
    if [[ $apt_updated -eq 0 ]]; then
        say "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# ---------------------------------------------------------------- packages
missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    say "apt packages: all present (${PACKAGES[*]})"
else
    # Only refresh the package lists if apt does not know a package at all; a stale list
    # that points at vanished files is caught by the retry below.
    for p in "${missing[@]}"; do
        if [[ -z $(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}') ]] ||
            [[ $(apt-cache policy "$p" | awk '/Candidate:/ {print $2}') == "(none)" ]]; then
            apt_update
            break
        fi
    done
    [[ $(id -u) -eq 0 ]] || die "missing packages ${missing[*]}: run as root to install them"
    say "installing: ${missing[*]}"
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        [[ $apt_updated -eq 0 ]] || die "apt-get install ${missing[*]} failed"
        apt_update
        apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
            die "apt-get install ${missing[*]} failed"
    fi
fi

# ---------------------------------------------------------------- kernel
# The package names carry the kernel ABI (linux-image-6.12.117+deb12-cloud-amd64); the
# -unsigned flavour has the same vmlinuz without the secure-boot signature, which qemu's
# direct kernel boot does not care about. Prefer it, fall back to the signed one.
KVER="" KPKG=""
find_kernel_pkg() {
    local names
    names=$(apt-cache pkgnames linux-image-6.12. 2>/dev/null |
        grep -E '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-cloud-amd64(-unsigned)?$') || return 0
    KVER=$(sed -E 's/^linux-image-//; s/-unsigned$//' <<<"$names" | sort -uV | tail -n 1)
    if grep -qxF "linux-image-$KVER-unsigned" <<<"$names"; then
        KPKG="linux-image-$KVER-unsigned"
    else
        KPKG="linux-image-$KVER"
    fi
}

find_kernel_pkg
if [[ -z $KVER ]]; then
    apt_update
    find_kernel_pkg
fi
[[ -n $KVER ]] ||
    die "apt-cache knows no linux-image-6.12.*-cloud-amd64 package: is bookworm-security in the apt sources?"

DEST="$KERNEL_DIR/$KVER"
if [[ -f $DEST/.complete ]]; then
    say "kernel $KVER: already extracted in $DEST"
    ln -sfn "$KVER" "$KERNEL_DIR/current"
    exit 0
fi

say "kernel $KVER: fetching $KPKG"
mkdir -p "$KERNEL_DIR"
# apt-get download drops root privileges to the _apt user unless told otherwise, and that
# user cannot write into the repository.
DEB=$(find "$KERNEL_DIR" -maxdepth 1 -name "${KPKG}_*.deb" -print -quit)
if [[ -z $DEB ]]; then
    if ! (cd "$KERNEL_DIR" && apt-get download -q -o APT::Sandbox::User=root "$KPKG"); then
        [[ $apt_updated -eq 0 ]] || die "apt-get download $KPKG failed"
        apt_update
        (cd "$KERNEL_DIR" && apt-get download -q -o APT::Sandbox::User=root "$KPKG") ||
            die "apt-get download $KPKG failed"
    fi
    DEB=$(find "$KERNEL_DIR" -maxdepth 1 -name "${KPKG}_*.deb" -print -quit)
fi
[[ -n $DEB ]] || die "downloaded package for $KPKG not found in $KERNEL_DIR"

TMP=$(mktemp -d "$KERNEL_DIR/.extract.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
say "extracting $(basename "$DEB")"
dpkg-deb -x "$DEB" "$TMP/root"
MODROOT="$TMP/root/lib/modules/$KVER"
[[ -f $TMP/root/boot/vmlinuz-$KVER ]] || die "no /boot/vmlinuz-$KVER in $DEB"
[[ -d $MODROOT ]] || die "no /lib/modules/$KVER in $DEB"

# The package ships no modules.dep (the postinst runs depmod); build it in the scratch tree
# so modprobe can tell us, per module, "builtin" or the insmod chain in order.
depmod -b "$TMP/root" "$KVER"

rm -rf "$TMP/out"
mkdir -p "$TMP/out/modules"
cp "$TMP/root/boot/vmlinuz-$KVER" "$TMP/out/vmlinuz"
cp "$MODROOT/modules.builtin" "$TMP/out/modules.builtin"
: >"$TMP/out/modules.load"
for m in "${GUEST_MODULES[@]}"; do
    deps=$(modprobe -d "$TMP/root" -S "$KVER" --show-depends "$m" 2>&1) ||
        die "module $m: $deps"
    while read -r kind path _; do
        case $kind in
        builtin)
            say "module $path: built into the kernel"
            ;;
        insmod)
            name=$(basename "$path")
            ko=${name%.xz}
            ko=${ko%.zst}
            ko=${ko%.gz}
            grep -qxF "$ko" "$TMP/out/modules.load" && continue
            case $name in
            *.ko.xz) xz -dc "$path" >"$TMP/out/modules/$ko" ;;
            *.ko.zst) zstd -qdc "$path" >"$TMP/out/modules/$ko" ;;
            *.ko.gz) gzip -dc "$path" >"$TMP/out/modules/$ko" ;;
            *.ko) cp "$path" "$TMP/out/modules/$ko" ;;
            *) die "unexpected module file $path" ;;
            esac
            echo "$ko" >>"$TMP/out/modules.load"
            if [[ ${ko%.ko} == "$m" ]]; then
                say "module $m: extracted"
            else
                say "module ${ko%.ko}: extracted (dependency of $m)"
            fi
            ;;
        *)
            die "module $m: unexpected modprobe output: $kind $path"
            ;;
        esac
    done <<<"$deps"
done

touch "$TMP/out/.complete"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
ln -sfn "$KVER" "$KERNEL_DIR/current"
say "kernel $KVER ready in $DEST (load order: $(tr '\n' ' ' <"$DEST/modules.load"))"
