#!/bin/bash
# Run end-to-end scenarios (ci/scenarios/NAME.sh) against the real kernel ublk driver.
#
# The development machines have no ublk_drv and cannot load modules, so by default the
# scenarios run in a throw-away guest: one of the Debian cloud kernels that ci/setup.sh
# fetches (--kernel 6.12, the default, or 6.18) under qemu TCG, with a busybox initramfs
# built here holding the rewind binary, fio, e2fsprogs and the scenario scripts. On a host
# that has /dev/ublk-control (or can modprobe ublk_drv) they run directly on the host
# instead, as root, unless --kernel or --guest asks for the guest.
#
# Every scenario reports "SCENARIO <name> PASS", "SCENARIO <name> SKIP <why>" (it needs
# what this kernel lacks: skip_scenario in ci/scenarios/lib.sh) or "SCENARIO <name> FAIL
# rc=<n>"; this script exits 0 only if no requested scenario failed (a skipped one is not
# a failure, nor counted as passed), and ends with the line
#   guest: N passed, M failed, K skipped (kernel <uname -r of the kernel they ran on>)
# All output is also kept in ci/work/guest-<timestamp>-<kernel>.log.
set -euo pipefail

# All of it is one { ... } block: bash reads the block whole before running it, so editing
# this file while a run is under way (CI, a colleague) cannot derail that run.
{
CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$CI_DIR/.." && pwd)
WORK="$CI_DIR/work"

list_scenarios() {
    local f names=()
    for f in "$CI_DIR"/scenarios/*.sh; do
        f=${f##*/}
        [[ $f == lib.sh ]] || names+=("${f%.sh}")
    done
    echo "${names[*]}"
}

usage() {
    cat <<EOF
usage: ci/guest.sh [options] SCENARIO...

Runs ci/scenarios/SCENARIO.sh for each SCENARIO, in one guest boot.

options:
  --kernel SERIES    guest kernel: 6.12 (the default: Debian 12's cloud kernel) or 6.18
                     (the LTS cloud kernel of Debian 13's trixie-backports), as fetched by
                     ci/setup.sh into ci/work/kernel/SERIES; given, it implies --guest
  --bin PATH         rewind binary to test (default: target/release/rewind in the repo)
  --mem SIZE         guest memory, qemu syntax (default: 4G)
  --smp N            guest vCPUs (default: 2)
  --accel ACCEL      qemu -accel argument (default: tcg; tcg,thread=single avoids
                     multi-threaded TCG at the cost of speed)
  --timeout SECONDS  limit for the whole boot (or host run); qemu is killed after it
                     (default: 1800)
  --env NAME=VALUE   export NAME=VALUE to the scenarios (repeatable)
  --with NAME=PATH   also put the host executable PATH into the guest as /usr/bin/NAME,
                     with the shared libraries it needs (repeatable); ci/bench.sh adds
                     rublk and dmsetup this way. Without it the guest holds only the tools
                     every scenario needs.
  --guest            use the qemu guest even if this host has ublk
  --host             run on this host without checking that it has ublk (as root)
  -h, --help         this text

scenarios available: $(list_scenarios)
EOF
}

say() { printf 'guest.sh: %s\n' "$*"; }
die() {
    printf 'guest.sh: ERROR: %s\n' "$*" >&2
    exit 2
}

BIN="$REPO/target/release/rewind"
KERNEL=6.12
KERNEL_GIVEN=0
MEM=4G
SMP=2
ACCEL=tcg
TIMEOUT=1800
FORCE_GUEST=0
FORCE_HOST=0
ENVS=()
WITHS=()
SCENARIOS=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --kernel) KERNEL=${2:?--kernel needs a series, 6.12 or 6.18}; KERNEL_GIVEN=1; shift 2 ;;
    --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
    --mem) MEM=${2:?--mem needs a size}; shift 2 ;;
    --smp) SMP=${2:?--smp needs a number}; shift 2 ;;
    --accel) ACCEL=${2:?--accel needs an argument}; shift 2 ;;
    --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
    --env) ENVS+=("${2:?--env needs NAME=VALUE}"); shift 2 ;;
    --with) WITHS+=("${2:?--with needs NAME=PATH}"); shift 2 ;;
    --guest) FORCE_GUEST=1; shift ;;
    --host) FORCE_HOST=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; SCENARIOS+=("$@"); break ;;
    -*) usage >&2; die "unknown option $1" ;;
    *) SCENARIOS+=("$1"); shift ;;
    esac
done
[[ ${#SCENARIOS[@]} -gt 0 ]] || { usage >&2; die "no scenario given"; }
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds, got '$TIMEOUT'"
[[ $SMP =~ ^[0-9]+$ ]] || die "--smp wants a number, got '$SMP'"
# Any series ci/setup.sh extracted will do; 6.12 and 6.18 are the ones it fetches.
[[ $KERNEL =~ ^[0-9]+\.[0-9]+$ ]] || die "--kernel wants a series such as 6.12 or 6.18, got '$KERNEL'"
for i in "${!SCENARIOS[@]}"; do
    s=${SCENARIOS[$i]%.sh}
    s=${s##*/}
    # Names travel on the kernel command line and into regular expressions: keep them plain.
    [[ $s =~ ^[A-Za-z0-9_-]+$ ]] || die "scenario names are letters, digits, - and _: '$s'"
    [[ $s != lib && -f $CI_DIR/scenarios/$s.sh ]] || die "no scenario '$s' (looked for ci/scenarios/$s.sh)"
    # Each scenario's verdict is its SCENARIO line: a name given twice would be ambiguous.
    for ((j = 0; j < i; j++)); do
        [[ ${SCENARIOS[j]} != "$s" ]] || die "scenario '$s' given twice"
    done
    SCENARIOS[i]=$s
done
for e in "${ENVS[@]}"; do
    [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got '$e'"
done
for w in "${WITHS[@]}"; do
    [[ $w =~ ^[A-Za-z0-9_.-]+= ]] || die "--with wants NAME=PATH (NAME: letters, digits, . - _), got '$w'"
    [[ -f ${w#*=} && -x ${w#*=} ]] || die "--with $w: ${w#*=} is not an executable file"
done
# A relative --bin is taken from the current directory if it is there, else from the repo root.
if [[ $BIN != /* ]]; then
    if [[ -e $BIN ]]; then BIN="$(pwd)/$BIN"; else BIN="$REPO/$BIN"; fi
fi
if [[ ! -x $BIN ]]; then
    # Not fatal: scenarios that only use the kernel loop device (bench with
    # BENCH_TARGETS=loop) run without it; the ones that need it fail and say so.
    say "WARNING: no rewind binary at $BIN; scenarios that need it will fail"
    BIN=""
fi

# Host mode when the host itself can serve ublk devices and no guest kernel was asked for.
MODE=guest
if [[ $FORCE_HOST -eq 1 ]]; then
    [[ $FORCE_GUEST -eq 0 ]] || die "--guest and --host exclude each other"
    [[ $KERNEL_GIVEN -eq 0 ]] || die "--kernel chooses a guest kernel: it excludes --host"
    MODE=host
elif [[ $FORCE_GUEST -eq 0 && $KERNEL_GIVEN -eq 0 ]]; then
    if [[ -c /dev/ublk-control ]] ||
        { [[ $(id -u) -eq 0 ]] && modprobe ublk_drv 2>/dev/null && [[ -c /dev/ublk-control ]]; }; then
        MODE=host
    fi
fi
# The kernel the scenarios run on, as uname -r names it (the guest's directory under
# ci/work/kernel is named so by ci/setup.sh).
if [[ $MODE == guest ]]; then
    KDIR="$WORK/kernel/$KERNEL"
    [[ -f $KDIR/vmlinuz && -f $KDIR/modules.load ]] ||
        die "no guest kernel $KERNEL in $KDIR: run ci/setup.sh first"
    KRELEASE=$(basename "$(readlink -f "$KDIR")")
    LOG_TAG=$KERNEL
else
    KRELEASE=$(uname -r)
    LOG_TAG=host
fi

mkdir -p "$WORK"
LOG="$WORK/guest-$(date +%Y%m%d-%H%M%S)-$LOG_TAG.log"
# Two runs started in the same second (they may run side by side) get their own logs.
if [[ -e $LOG ]]; then LOG="${LOG%.log}-$$.log"; fi
: >"$LOG"
# Keep the 30 newest logs.
find "$WORK" -maxdepth 1 -name 'guest-*.log' -printf '%T@ %p\n' | sort -rn | tail -n +31 |
    cut -d' ' -f2- | xargs -r rm -f

STAGE=""
INITRD=""
BOOTLOG=""
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    if [[ -n $STAGE ]]; then rm -rf "$STAGE"; fi
    if [[ -n $INITRD ]]; then rm -f "$INITRD"; fi
    if [[ -n $BOOTLOG ]]; then rm -f "$BOOTLOG"; fi
}
trap cleanup EXIT

# Copy a host executable and the shared libraries it needs (as ldd resolves them, the
# dynamic loader included) into the initramfs tree $STAGE.
copy_with_libs() {
    local src=$1 dest=$2 lib dir
    mkdir -p "$STAGE/$(dirname "$dest")"
    cp -L "$src" "$STAGE/$dest"
    # ldd prints "libx.so.1 => /path/libx.so.1 (0x...)" and, for the loader, "/lib64/ld-... (0x...)".
    # A static binary makes ldd exit non-zero with "not a dynamic executable": no libraries.
    local out
    out=$(ldd "$src" 2>&1) || return 0
    if grep -q 'not found' <<<"$out"; then
        die "$src: missing shared libraries on the host:"$'\n'"$(grep 'not found' <<<"$out")"
    fi
    while read -r lib; do
        # Put each library in its directory's canonical place; the tree mirrors the host's
        # /lib -> usr/lib style symlinks, so every spelling of the path resolves.
        dir=$(realpath "$(dirname "$lib")")
        [[ -e $STAGE$dir/$(basename "$lib") ]] && continue
        mkdir -p "$STAGE$dir"
        cp -L "$lib" "$STAGE$dir/"
    done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out")
}

build_initramfs() {
    local kdir=$1 out=$2 t0=$SECONDS
    STAGE=$(mktemp -d "$WORK/initramfs.XXXXXX")
    mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,ci/scenarios,lib/modules/ci}
    # Mirror the host's merged-/usr symlinks for the library directories (not for bin and
    # sbin: /bin holds busybox's applets, /usr/bin the real tools that take precedence).
    local d
    for d in lib lib64 lib32 libx32; do
        if [[ -L /$d ]]; then
            ln -s "$(readlink "/$d")" "$STAGE/$d"
            mkdir -p "$STAGE/$(readlink -f "/$d")"
        fi
    done
    mkdir -p "$STAGE/lib/modules/ci"

    local busybox
    busybox=$(command -v busybox) || die "busybox not found: run ci/setup.sh"
    # The guest has no libraries for busybox itself: it must be the static build.
    if ldd "$busybox" >/dev/null 2>&1; then
        die "$busybox is dynamically linked: install busybox-static"
    fi
    cp -L "$busybox" "$STAGE/bin/busybox"
    local applet
    for applet in $("$busybox" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$STAGE/bin/$applet"
    done

    # Real tools: bash for the scenarios (same shell as on a ublk host), fio, e2fsprogs,
    # util-linux losetup (busybox's has no --direct-io) and blkdiscard (busybox's has no -z).
    local tool path
    for tool in bash fio mke2fs e2fsck losetup blockdev blkdiscard; do
        path=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH command -v "$tool") || die "$tool not found: run ci/setup.sh"
        copy_with_libs "$path" "/usr/bin/$tool"
    done
    # For scripts with a #!/bin/bash line (the scenarios themselves are run as `bash FILE`).
    ln -s /usr/bin/bash "$STAGE/bin/bash"
    ln -s mke2fs "$STAGE/usr/bin/mkfs.ext4"
    ln -s e2fsck "$STAGE/usr/bin/fsck.ext4"
    if [[ -f /etc/mke2fs.conf ]]; then cp /etc/mke2fs.conf "$STAGE/etc/"; fi
    if [[ -n $BIN ]]; then
        copy_with_libs "$BIN" /usr/bin/rewind
    fi
    local w
    for w in "${WITHS[@]}"; do
        copy_with_libs "${w#*=}" "/usr/bin/${w%%=*}"
        say "initramfs: /usr/bin/${w%%=*} from ${w#*=}"
    done

    # Without /etc/ld.so.cache the loader only searches its built-in directories; build a
    # cache for the tree so libraries in other directories are found too.
    if [[ -d /etc/ld.so.conf.d ]]; then cp -r /etc/ld.so.conf.d "$STAGE/etc/"; fi
    if [[ -f /etc/ld.so.conf ]]; then cp /etc/ld.so.conf "$STAGE/etc/"; fi
    ldconfig -r "$STAGE" 2>/dev/null || say "WARNING: ldconfig -r failed; relying on the loader's default paths"

    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
    printf 'root:x:0:\n' >"$STAGE/etc/group"

    cp "$kdir"/modules/*.ko "$STAGE/lib/modules/ci/" 2>/dev/null || true
    cp "$kdir/modules.load" "$STAGE/lib/modules/ci/"
    if [[ -f $kdir/modules.chains ]]; then cp "$kdir/modules.chains" "$STAGE/lib/modules/ci/"; fi

    cp "$CI_DIR/guest/init" "$STAGE/init"
    cp "$CI_DIR/guest/run-scenarios.sh" "$STAGE/ci/"
    cp "$CI_DIR"/scenarios/*.sh "$STAGE/ci/scenarios/"
    chmod +x "$STAGE/init" "$STAGE/ci/run-scenarios.sh"
    local e
    : >"$STAGE/ci/env"
    for e in "${ENVS[@]}"; do
        printf 'export %s=%q\n' "${e%%=*}" "${e#*=}" >>"$STAGE/ci/env"
    done

    # Uncompressed: qemu loads it in a blink, and decompressing under TCG costs seconds.
    (cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$out"
    say "initramfs: $(du -sh "$out" | cut -f1) in $((SECONDS - t0))s"
    rm -rf "$STAGE"
    STAGE=""
}

run_guest() {
    local kdir=$KDIR
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: run ci/setup.sh"
    INITRD=$(mktemp "$WORK/initramfs-XXXXXX.cpio")
    build_initramfs "$kdir" "$INITRD"

    local list
    list=$(IFS=,; echo "${SCENARIOS[*]}")
    say "booting $KRELEASE (--kernel $KERNEL) under qemu $ACCEL (${SMP} vCPUs, $MEM), timeout ${TIMEOUT}s: ${SCENARIOS[*]}"
    local qemu=(
        qemu-system-x86_64 -accel "$ACCEL" -machine q35 -cpu max -smp "$SMP" -m "$MEM"
        -kernel "$kdir/vmlinuz" -initrd "$INITRD"
        -append "console=ttyS0 panic=-1 quiet rewind_scenarios=$list"
        -nographic -no-reboot -nic none
    )
    local rc attempt=1 max_boots=3 t0=$SECONDS
    # This boot's output alone, to tell whether /init ran.
    BOOTLOG=$(mktemp "$WORK/boot-XXXXXX.log")
    while :; do
        rc=0
        # stdin from /dev/null: qemu must not put a terminal into raw mode, nor wait for one.
        # timeout -k: qemu gets SIGTERM at the limit, SIGKILL 10 s later if still there;
        # --foreground keeps qemu in our process group, so that Ctrl-C reaches it too.
        # sed: the serial console ends lines with \r\n, and the firmware sends terminal
        # resets and screen clears that would wipe the user's terminal.
        timeout --foreground -k 10 "$TIMEOUT" "${qemu[@]}" </dev/null 2>&1 |
            sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' |
            tee -a "$LOG" "$BOOTLOG" || rc=${PIPESTATUS[0]}
        # Now and then (about one boot in twenty here) the kernel oopses on an int3 left by
        # its own code patching while secondary CPUs come up: a multi-threaded TCG flake.
        # Nothing of the tests ran then, so boot again; a crash after /init started is
        # never retried, it may be ours.
        if [[ $rc -eq 124 || $rc -eq 137 ]] || grep -q '^init: kernel ' "$BOOTLOG" ||
            [[ $attempt -ge $max_boots ]]; then
            break
        fi
        attempt=$((attempt + 1))
        say "the guest died before /init ran (emulation flake?): boot $attempt of $max_boots" | tee -a "$LOG"
        : >"$BOOTLOG"
    done
    rm -f "$INITRD" "$BOOTLOG"
    INITRD="" BOOTLOG=""
    RUN_SECONDS=$((SECONDS - t0))
    RUN_RC=$rc
}

run_host() {
    [[ $(id -u) -eq 0 ]] || die "this host has ublk: run as root (or pass --guest)"
    local scratch bindir rc=0 t0=$SECONDS
    scratch=$(mktemp -d /tmp/rewind-ci.XXXXXX)
    bindir="$scratch/bin"
    mkdir -p "$bindir"
    if [[ -n $BIN ]]; then ln -s "$BIN" "$bindir/rewind"; fi
    local w
    for w in "${WITHS[@]}"; do ln -sf "$(realpath "${w#*=}")" "$bindir/${w%%=*}"; done
    say "running on the host (it has ublk), scratch $scratch, timeout ${TIMEOUT}s: ${SCENARIOS[*]}"
    timeout -k 10 "$TIMEOUT" env "${ENVS[@]}" PATH="$bindir:$PATH" SCRATCH="$scratch" \
        REWIND_LOG_DIR="$scratch" bash "$CI_DIR/guest/run-scenarios.sh" "${SCENARIOS[@]}" \
        </dev/null 2>&1 | tee -a "$LOG" || rc=${PIPESTATUS[0]}
    rm -rf "$scratch"
    RUN_SECONDS=$((SECONDS - t0))
    RUN_RC=$rc
}

RUN_SECONDS=0
RUN_RC=0
{
    say "log: $LOG"
    say "mode: $MODE, kernel: $KRELEASE, binary: ${BIN:-none}"
} | tee -a "$LOG"
if [[ $MODE == guest ]]; then run_guest; else run_host; fi

# ------------------------------------------------------------------ verdict
{
    echo
    if [[ $RUN_RC -eq 124 || $RUN_RC -eq 137 ]]; then
        say "TIMEOUT: killed after ${TIMEOUT}s"
    elif [[ $RUN_RC -ne 0 ]]; then
        say "$MODE run exited with rc=$RUN_RC"
    fi
    say "$MODE run took ${RUN_SECONDS}s"
} | tee -a "$LOG"

# A scenario that reported more than once (it should not) is judged by its last report.
results=$(tr -d '\r' <"$LOG" | grep -E '^SCENARIO [^ ]+ (PASS|SKIP .+|FAIL rc=[0-9]+)$' || true)
passed=0
failed=0
skipped=0
verdicts=()
for s in "${SCENARIOS[@]}"; do
    line=$(grep -E "^SCENARIO $s " <<<"$results" | tail -n 1 || true)
    if [[ $line == "SCENARIO $s PASS" ]]; then
        passed=$((passed + 1))
        verdicts+=("$s: PASS")
    elif [[ $line == "SCENARIO $s SKIP "* ]]; then
        skipped=$((skipped + 1))
        verdicts+=("$s: SKIP (${line#"SCENARIO $s SKIP "})")
    elif [[ -n $line ]]; then
        failed=$((failed + 1))
        verdicts+=("$s: FAIL (${line##* })")
    else
        failed=$((failed + 1))
        verdicts+=("$s: FAIL (never reported: timeout, crash or hang before it finished)")
    fi
done
printf 'guest.sh: %s\n' "${verdicts[@]}" | tee -a "$LOG"
summary="guest: $passed passed, $failed failed, $skipped skipped (kernel $KRELEASE)"
if [[ $failed -eq 0 && $RUN_RC -ne 0 ]]; then
    # Everything reported PASS but qemu (or the host runner) ended badly: do not trust it.
    say "no scenario reported FAIL but the run exited with rc=$RUN_RC: failing" | tee -a "$LOG"
    echo "$summary" | tee -a "$LOG"
    exit 1
fi
echo "$summary" | tee -a "$LOG"
[[ $failed -eq 0 ]]
}
exit
