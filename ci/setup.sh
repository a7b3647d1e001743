#!/bin/bash
# Prepare a Debian bookworm machine (run as root) for the end-to-end tests:
#   1. install the apt packages the harness and the build need;
#   2. fetch the two guest kernels and extract, decompressed, their vmlinuz and the modules
#      the test guest loads (see GUEST_MODULES and EXTRA_MODULES):
#        6.12  the newest Debian 12 cloud kernel, from this machine's own apt sources
#              (bookworm-security);
#        6.18  the newest 6.18 LTS cloud kernel of Debian 13's trixie-backports, through a
#              private apt configuration in ci/work/apt-trixie (this machine's apt sources
#              and state are left alone), from $DEBIAN_MIRROR (default
#              http://deb.debian.org/debian).
# Idempotent: packages already present and a kernel already extracted are left alone.
# Needs root only to install packages.
#
# With --bench (ci/bench.sh passes it), also what the benchmark needs beyond the tests:
#   3. the apt packages of BENCH_PACKAGES: dmsetup (for the device-mapper targets, copied
#      into the guest), gnuplot-nox (the plot), python3 (the report);
#   4. rublk (the version RUBLK_VERSION names), the peer ublk server, built with `cargo install` into
#      ci/work/rublk/bin/rublk unless that binary is already this version.
# CI (ci/test.sh) runs it without --bench: none of that is installed or built then.
#
# Result, per kernel: ci/work/kernel/<series> -> <kernel version>/ (series 6.12, 6.18; and
# ci/work/kernel/current -> the 6.12 one) holding
#   vmlinuz            the kernel that guest.sh boots under qemu TCG
#   modules/*.ko       decompressed modules (insmod cannot read .ko.xz without kmod)
#   modules.load       the file names of GUEST_MODULES and their dependencies, in the order
#                      they must be insmod'ed; the guest loads them at boot
#   modules.chains     one line per module of GUEST_MODULES and EXTRA_MODULES: its name, then
#                      the files to insmod for it, dependencies first (none: built in)
#   modules.builtin    copied from the package, for reference
set -euo pipefail

BENCH=0
for arg in "$@"; do
    case $arg in
    --bench) BENCH=1 ;;
    -h | --help)
        awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) printf 'setup: ERROR: unknown argument %s (known: --bench, --help)\n' "$arg" >&2; exit 2 ;;
    esac
done

CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KERNEL_DIR="$CI_DIR/work/kernel"

# qemu-system-x86: the guest; busybox-static + cpio: its initramfs; fio, e2fsprogs: the
# tests; libclang-dev: bindgen in libublk's build; zstd, xz-utils, kmod: unpacking modules
# and resolving their dependencies; g++: libFuzzer, which cargo fuzz builds from C++;
# qemu-utils: qemu-nbd, which serves an NBD device in the guest (the mirror scenario).
PACKAGES=(qemu-system-x86 busybox-static cpio fio e2fsprogs libclang-dev zstd xz-utils kmod g++
    qemu-utils)
# With --bench: dmsetup goes into the guest (dm-thin, dm-snapshot); gnuplot-nox draws the
# plot and python3 writes the report on the host.
BENCH_PACKAGES=(dmsetup gnuplot-nox python3)
# The rublk release the benchmark builds (crates.io); its loop target is the peer.
RUBLK_VERSION=0.2.15
RUBLK_ROOT="$CI_DIR/work/rublk"

# Modules the guest loads at boot. Whatever of these (and of their dependencies) is built
# into the kernel is skipped; the rest is extracted. ext4 is listed although the Debian
# cloud kernel has it built in, so a kernel where it is a module still works.
GUEST_MODULES=(ublk_drv loop ext4)
# Modules extracted too, but loaded only by the scenarios that want them (load_module in
# ci/scenarios/lib.sh): baselines for benchmarks, and nbd for a mirror to an NBD device.
EXTRA_MODULES=(null_blk dm-thin-pool dm-snapshot dm-log-writes nbd)

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
if [[ $BENCH -eq 1 ]]; then PACKAGES+=("${BENCH_PACKAGES[@]}"); fi
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

# ---------------------------------------------------------------- trixie's apt
# The 6.18 kernel comes from Debian 13's trixie-backports, which this bookworm machine's apt
# sources do not (and must not) carry. So apt gets a configuration of its own for it: its
# own sources list, state (package lists) and cache under ci/work/apt-trixie, an empty dpkg
# status, no sources.list.d and no pinning from /etc/apt. The rest of /etc/apt/apt.conf.d
# (a proxy, say) still applies. Signatures are checked as for any apt source: the
# InRelease file must carry a good signature from a key in the Debian archive keyring.
TRIXIE_APT="$CI_DIR/work/apt-trixie"
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ARCHIVE_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
TRIXIE_APT_OPTS=(
    -o "Dir::Etc::SourceList=$TRIXIE_APT/sources.list"
    -o Dir::Etc::SourceParts=/dev/null
    -o Dir::Etc::Preferences=/dev/null
    -o Dir::Etc::PreferencesParts=/dev/null
    -o "Dir::State=$TRIXIE_APT/state"
    -o "Dir::State::status=$TRIXIE_APT/status"
    -o "Dir::Cache=$TRIXIE_APT/cache"
    -o Acquire::Languages=none
)
TRIXIE_SOURCE="deb [signed-by=$ARCHIVE_KEYRING] $DEBIAN_MIRROR trixie-backports main"

# trixie's Release files are signed with both the bookworm and the trixie archive keys.
# bookworm's debian-archive-keyring has the trixie keys from version 2023.3+deb12u2 on (it
# then also ships them one per file, which is what is checked here); an older one is
# upgraded, so that trixie-backports stays verifiable after the bookworm key retires.
trixie_keyring() {
    [[ -f /usr/share/keyrings/debian-archive-trixie-automatic.gpg && -f $ARCHIVE_KEYRING ]] &&
        return 0
    [[ $(id -u) -eq 0 ]] ||
        die "$ARCHIVE_KEYRING lacks Debian 13's keys: run as root to upgrade debian-archive-keyring"
    say "upgrading debian-archive-keyring (it lacks Debian 13's keys)"
    apt_update
    apt-get install -y -qq debian-archive-keyring || die "apt-get install debian-archive-keyring failed"
    [[ -f /usr/share/keyrings/debian-archive-trixie-automatic.gpg ]] ||
        die "debian-archive-keyring $(dpkg-query -W -f='${Version}' debian-archive-keyring) has no trixie keys; 2023.3+deb12u2 or later has"
}

trixie_apt_updated=0
trixie_apt_update() {
    [[ $trixie_apt_updated -eq 0 ]] || return 0
    trixie_keyring
    mkdir -p "$TRIXIE_APT/state/lists/partial" "$TRIXIE_APT/cache/archives/partial"
    : >"$TRIXIE_APT/status"
    echo "$TRIXIE_SOURCE" >"$TRIXIE_APT/sources.list"
    say "apt-get update (trixie-backports, private configuration in $TRIXIE_APT)"
    # --error-on=any: a list that failed to download or to verify is an error, not a warning.
    apt-get "${TRIXIE_APT_OPTS[@]}" -o APT::Sandbox::User=root -qq --error-on=any update ||
        die "apt-get update of trixie-backports failed"
    trixie_apt_updated=1
}

# ---------------------------------------------------------------- kernels
# find_kernel_pkg SERIES [APT OPTIONS...]: sets KVER and KPKG to the newest
# linux-image-SERIES.*-cloud-amd64 that apt knows (empty if none). The package names carry
# the kernel ABI (linux-image-6.12.117+deb12-cloud-amd64); bookworm also has a -unsigned
# flavour, with the same vmlinuz without the secure-boot signature, which qemu's direct
# kernel boot does not care about. Prefer it, fall back to the signed one.
KVER="" KPKG=""
find_kernel_pkg() {
    local series=$1 names
    shift
    KVER="" KPKG=""
    names=$(apt-cache "$@" pkgnames "linux-image-$series." 2>/dev/null |
        grep -E "^linux-image-${series//./\\.}\.[0-9]+\+deb[0-9]+-cloud-amd64(-unsigned)?\$") || return 0
    KVER=$(sed -E 's/^linux-image-//; s/-unsigned$//' <<<"$names" | sort -uV | tail -n 1)
    if grep -qxF "linux-image-$KVER-unsigned" <<<"$names"; then
        KPKG="linux-image-$KVER-unsigned"
    else
        KPKG="linux-image-$KVER"
    fi
}

# download_kernel_pkg [APT OPTIONS...]: apt-get download $KPKG into $KERNEL_DIR unless its
# .deb is there already; sets DEB. apt-get download drops root privileges to the _apt user
# unless told otherwise, and that user cannot write into the repository.
DEB=""
download_kernel_pkg() {
    DEB=$(find "$KERNEL_DIR" -maxdepth 1 -name "${KPKG}_*.deb" -print -quit)
    [[ -z $DEB ]] || return 0
    say "kernel $KVER: fetching $KPKG"
    (cd "$KERNEL_DIR" && apt-get "$@" -o APT::Sandbox::User=root -q download "$KPKG") || return 1
    DEB=$(find "$KERNEL_DIR" -maxdepth 1 -name "${KPKG}_*.deb" -print -quit)
    [[ -n $DEB ]] || die "downloaded package for $KPKG not found in $KERNEL_DIR"
}

# What an extracted kernel was extracted with, kept in its .complete: a kernel extracted
# for other module lists is extracted again (from the .deb, if still there).
STAMP="modules: ${GUEST_MODULES[*]}; extra: ${EXTRA_MODULES[*]}"

# extract_kernel DEST: unpack $DEB, decompress vmlinuz and the modules into DEST.
extract_kernel() {
    local dest=$1 tmp modroot m deps kind path name ko chain
    tmp=$(mktemp -d "$KERNEL_DIR/.extract.XXXXXX")
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT
    say "extracting $(basename "$DEB")"
    dpkg-deb -x "$DEB" "$tmp/root"
    [[ -f $tmp/root/boot/vmlinuz-$KVER ]] || die "no /boot/vmlinuz-$KVER in $DEB"
    # bookworm's packages put the modules in /lib/modules, trixie's (merged /usr) in
    # /usr/lib/modules; depmod and modprobe -d look in <root>/lib/modules.
    if [[ ! -e $tmp/root/lib && -d $tmp/root/usr/lib/modules ]]; then
        ln -s usr/lib "$tmp/root/lib"
    fi
    modroot="$tmp/root/lib/modules/$KVER"
    [[ -d $modroot ]] || die "no /lib/modules/$KVER or /usr/lib/modules/$KVER in $DEB"

    # The package ships no modules.dep (the postinst runs depmod); build it in the scratch
    # tree so modprobe can tell us, per module, "builtin" or the insmod chain in order.
    depmod -b "$tmp/root" "$KVER"

    mkdir -p "$tmp/out/modules"
    cp "$tmp/root/boot/vmlinuz-$KVER" "$tmp/out/vmlinuz"
    cp "$modroot/modules.builtin" "$tmp/out/modules.builtin"
    : >"$tmp/out/modules.load"
    : >"$tmp/out/modules.chains"
    for m in "${GUEST_MODULES[@]}" "${EXTRA_MODULES[@]}"; do
        deps=$(modprobe -d "$tmp/root" -S "$KVER" --show-depends "$m" 2>&1) ||
            die "module $m: $deps"
        chain=()
        while read -r kind path _; do
            case $kind in
            builtin)
                say "module $path: built into the kernel"
                continue
                ;;
            insmod) ;;
            *) die "module $m: unexpected modprobe output: $kind $path" ;;
            esac
            name=$(basename "$path")
            ko=${name%.xz}
            ko=${ko%.zst}
            ko=${ko%.gz}
            chain+=("$ko")
            [[ ! -e $tmp/out/modules/$ko ]] || continue
            case $name in
            *.ko.xz) xz -dc "$path" >"$tmp/out/modules/$ko" ;;
            *.ko.zst) zstd -qdc "$path" >"$tmp/out/modules/$ko" ;;
            *.ko.gz) gzip -dc "$path" >"$tmp/out/modules/$ko" ;;
            *.ko) cp "$path" "$tmp/out/modules/$ko" ;;
            *) die "unexpected module file $path" ;;
            esac
            if [[ ${ko%.ko} == "$m" ]]; then
                say "module $m: extracted"
            else
                say "module ${ko%.ko}: extracted (dependency of $m)"
            fi
        done <<<"$deps"
        echo "$m${chain[*]:+ ${chain[*]}}" >>"$tmp/out/modules.chains"
        if [[ " ${GUEST_MODULES[*]} " == *" $m "* ]]; then
            for ko in "${chain[@]}"; do
                grep -qxF "$ko" "$tmp/out/modules.load" || echo "$ko" >>"$tmp/out/modules.load"
            done
        fi
    done

    echo "$STAMP" >"$tmp/out/.complete"
    rm -rf "$dest"
    mv "$tmp/out" "$dest"
    rm -rf "$tmp"
    trap - EXIT
}

# get_kernel SERIES UPDATE WHERE [APT OPTIONS...]: make ci/work/kernel/SERIES the newest
# linux-image-SERIES.*-cloud-amd64 that apt (with those options) knows. UPDATE is the
# command that refreshes those package lists, WHERE names them in messages. The lists are
# only refreshed when apt knows no such kernel or its download fails (the .deb may have
# left the mirror): a kernel already extracted costs no network.
get_kernel() {
    local series=$1 update=$2 where=$3 dest
    shift 3
    find_kernel_pkg "$series" "$@"
    if [[ -z $KVER ]]; then
        $update
        find_kernel_pkg "$series" "$@"
    fi
    [[ -n $KVER ]] || die "apt knows no linux-image-$series.*-cloud-amd64 package in $where"

    dest="$KERNEL_DIR/$KVER"
    if [[ -f $dest/.complete && $(<"$dest/.complete") == "$STAMP" ]]; then
        say "kernel $series: $KVER already extracted in $dest"
    else
        mkdir -p "$KERNEL_DIR"
        if ! download_kernel_pkg "$@"; then
            $update
            find_kernel_pkg "$series" "$@"
            [[ -n $KVER ]] || die "apt knows no linux-image-$series.*-cloud-amd64 package in $where"
            dest="$KERNEL_DIR/$KVER"
            download_kernel_pkg "$@" || die "apt-get download $KPKG failed"
        fi
        extract_kernel "$dest"
        # Older downloads of this series are of no further use.
        find "$KERNEL_DIR" -maxdepth 1 -name "linux-image-$series.*.deb" ! -name "${KPKG}_*" -delete
        say "kernel $series: $KVER ready in $dest (load order: $(tr '\n' ' ' <"$dest/modules.load"))"
    fi
    ln -sfn "$KVER" "$KERNEL_DIR/$series"
}

# The 6.12 kernel comes from this machine's apt sources (bookworm-security).
get_kernel 6.12 apt_update "this machine's apt sources (is bookworm-security there?)"
# Older scripts and habits know the 6.12 kernel as "current".
ln -sfn "$KVER" "$KERNEL_DIR/current"

# The 6.18 kernel comes from trixie-backports, through the private configuration. Its
# package lists are fetched first if there are none yet (or the mirror changed).
if [[ ! -f $TRIXIE_APT/sources.list || $(<"$TRIXIE_APT/sources.list") != "$TRIXIE_SOURCE" ]]; then
    trixie_apt_update
fi
get_kernel 6.18 trixie_apt_update "trixie-backports" "${TRIXIE_APT_OPTS[@]}"

# ---------------------------------------------------------------- rublk (--bench)
# cargo install builds it from crates.io with the versions of its own Cargo.lock (--locked),
# without its default features (they pull in OpenCL for a vram target the benchmark does
# not use). Its build needs libclang-dev (bindgen), which PACKAGES has.
install_rublk() {
    local bin="$RUBLK_ROOT/bin/rublk" have cargo d
    have=$("$bin" --version 2>/dev/null | awk '{print $2}') || have=""
    if [[ $have == "$RUBLK_VERSION" ]]; then
        say "rublk $RUBLK_VERSION: already installed in $bin"
        return 0
    fi
    cargo=$(command -v cargo) || cargo=""
    for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
        if [[ -z $cargo && -x $d/cargo ]]; then cargo=$d/cargo; fi
    done
    [[ -n $cargo ]] || die "rublk: cargo not found (install Rust with rustup), needed to build rublk"
    say "rublk: cargo install rublk --version $RUBLK_VERSION --no-default-features --locked --root $RUBLK_ROOT${have:+ (replacing $have)} (a few minutes)"
    mkdir -p "$RUBLK_ROOT"
    "$cargo" install rublk --version "$RUBLK_VERSION" --no-default-features --locked \
        --root "$RUBLK_ROOT" || die "cargo install rublk $RUBLK_VERSION failed"
    have=$("$bin" --version 2>/dev/null | awk '{print $2}') || have=""
    [[ $have == "$RUBLK_VERSION" ]] || die "rublk: $bin reports version '$have' after installing $RUBLK_VERSION"
    say "rublk $RUBLK_VERSION: installed in $bin"
}
if [[ $BENCH -eq 1 ]]; then install_rublk; fi
