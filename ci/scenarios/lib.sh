# shellcheck shell=bash
# Helpers for the scenario scripts, sourced first thing by each:
#     . "$(dirname "$0")/lib.sh"
# Scenarios run under bash both in the test guest and on a host with ublk, so they get the
# same shell either way; the other tools may be busybox (guest) or GNU (host), so only
# options both understand are used.
#
# Environment (set by ci/guest/init, ci/guest/run-scenarios.sh or ci/guest.sh):
#   SCRATCH         where image files go (tmpfs /tmp in the guest)
#   REWIND_LOG_DIR  where the daemon writes rewind-*.log; printed when a scenario fails
#   REWIND          the rewind command (default: rewind from PATH)
#   FIO_ENGINE      force a fio ioengine instead of probing io_uring, then libaio
#   SCENARIO_SKIP_FILE  where skip_scenario leaves its reason for the runner
#   CI_IN_GUEST     1 in the test guest
set -euo pipefail
# -E: the ERR trap below also fires inside functions and $(...).
set -E

SCENARIO=$(basename "$0" .sh)
# The kernel the scenario runs on: KERNEL_RELEASE as uname -r prints it
# (6.18.15+deb13-cloud-amd64), KERNEL_VERSION its major.minor (6.18).
KERNEL_RELEASE=$(uname -r)
KERNEL_VERSION=$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"$KERNEL_RELEASE")
# Kernel time at the start, to show only this scenario's kernel messages on failure.
KSTART=$(cut -d' ' -f1 /proc/uptime)
SCRATCH=${SCRATCH:-/tmp}
export REWIND_LOG_DIR=${REWIND_LOG_DIR:-$SCRATCH}
REWIND=${REWIND:-rewind}
# Limit for one rewind command (add, del, list): a hang must fail the scenario with a
# message rather than eat the whole boot's timeout.
REWIND_CMD_TIMEOUT=${REWIND_CMD_TIMEOUT:-120}

# Everything a scenario creates (images, mount points, checksums) lives here and is
# removed when it ends, so the scenarios of one boot do not fill the guest's RAM.
WORKDIR=$SCRATCH/$SCENARIO
# Devices this scenario created, for the cleanup: only those are deleted, never "all"
# (on a ublk host other rewind devices may be in use).
STATE=$WORKDIR/.state
rm -rf "$WORKDIR"
mkdir -p "$WORKDIR" "$STATE"
: >"$STATE/ublk"
: >"$STATE/loop"
: >"$STATE/nbd"
: >"$STATE/pids"

say() { printf '[%s %4ss] %s\n' "$SCENARIO" "$SECONDS" "$*"; }
die() {
    printf '[%s %4ss] FAIL: %s\n' "$SCENARIO" "$SECONDS" "$*" >&2
    exit 1
}

# With set -e a failing command ends the scenario silently; say which one it was.
on_err() {
    printf '[%s %4ss] command failed (rc=%s) at %s line %s: %s\n' \
        "$SCENARIO" "$SECONDS" "$1" "${BASH_SOURCE[1]##*/}" "$2" "$3" >&2
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

# kernel_at_least X.Y: true if the running kernel is version X.Y or newer.
kernel_at_least() {
    local want_major=${1%%.*} want_minor=${1#*.}
    local have_major=${KERNEL_VERSION%%.*} have_minor=${KERNEL_VERSION#*.}
    [[ $have_major -gt $want_major || ($have_major -eq $want_major && $have_minor -ge $want_minor) ]]
}

# skip_scenario REASON: end the scenario here, reported as "SCENARIO <name> SKIP REASON":
# counted as skipped, never as passed. For what this kernel (or host) cannot do, not for
# failures. Exit status 77, which alone (without the reason) the runner counts as a FAIL.
SKIPPED=0
skip_scenario() {
    say "SKIP: $1"
    if [[ -n ${SCENARIO_SKIP_FILE:-} ]]; then printf '%s\n' "$1" >"$SCENARIO_SKIP_FILE"; fi
    SKIPPED=1
    exit 77
}

# needs_kernel X.Y [WHAT]: skip the scenario ("skipped on 6.12: needs 6.16") unless the
# kernel is X.Y or newer. WHAT, if given, says what of X.Y it needs (UBLK_F_QUIESCE).
needs_kernel() {
    kernel_at_least "$1" || skip_scenario "skipped on $KERNEL_VERSION: needs $1${2:+ ($2)}"
}

# load_module NAME [PARAM=VALUE...]: load kernel module NAME (null_blk, dm-thin-pool,
# dm-snapshot, dm-log-writes: the EXTRA_MODULES of ci/setup.sh) and what it depends on,
# NAME itself with the given parameters (null_blk nr_devices=0). In the guest, insmod of
# the decompressed files setup extracted, in their order; on a host, modprobe.
load_module() {
    local m=$1 chain ko
    shift
    if [[ ${CI_IN_GUEST:-0} != 1 ]]; then
        modprobe "$m" "$@" || die "modprobe $m failed"
        return 0
    fi
    chain=$(awk -v m="$m" '$1 == m { $1 = ""; print; found = 1 } END { exit !found }' \
        /lib/modules/ci/modules.chains) ||
        die "module $m: not extracted for this kernel (EXTRA_MODULES in ci/setup.sh)"
    for ko in $chain; do
        ko=${ko%.ko}
        # /sys/module names a loaded module with _ for -.
        [[ -d /sys/module/${ko//-/_} ]] && continue
        if [[ $ko == "$m" ]]; then
            insmod "/lib/modules/ci/$ko.ko" "$@" || die "insmod $ko.ko $* failed"
        else
            insmod "/lib/modules/ci/$ko.ko" || die "insmod $ko.ko (for $m) failed"
        fi
    done
    say "module $m loaded"
}

# type -P: the binary, not the rewind() wrapper function below.
have_rewind() { type -P "$REWIND" >/dev/null 2>&1; }
need_rewind() {
    have_rewind || die "no '$REWIND' command in PATH (build it: cargo build --release; pass --bin to ci/guest.sh)"
}

# rewind CMD ARGS...: run the rewind CLI with a time limit.
rewind() {
    need_rewind
    timeout "$REWIND_CMD_TIMEOUT" "$REWIND" "$@"
}

# add_dev IMAGE ARGS... -> echoes the device path (/dev/ublkbN) once it is usable.
# Call as dev=$(add_dev ...): everything else it prints goes to stderr.
# With REWIND_POOL=N (the pool-foundation scenario), a missing IMAGE is made a pool of
# IMAGE and N backing files IMAGE.b1 .. IMAGE.bN first (`rewind create --backing`), with the
# --size, --history and --sparse of ARGS; the device is then added without them.
add_dev() {
    local img=$1 out err rc=0 dev
    shift
    need_rewind
    if [[ -n ${REWIND_POOL:-} && ! -e $img ]]; then
        local create=() rest=() backing i
        while [[ $# -gt 0 ]]; do
            case $1 in
            --size | --history) create+=("$1" "$2"); shift 2 ;;
            --sparse) create+=("$1"); shift ;;
            *) rest+=("$1"); shift ;;
            esac
        done
        for ((i = 1; i <= REWIND_POOL; i++)); do
            backing=$img.b$i
            rm -f "$backing" # a backing of an earlier pool of this name, whose image is gone
            create+=(--backing "$backing")
        done
        say "pool: rewind create $img ${create[*]}" >&2
        timeout "$REWIND_CMD_TIMEOUT" "$REWIND" create "$img" "${create[@]}" >&2 ||
            die "rewind create of the pool $img failed"
        set -- "${rest[@]}"
    fi
    out=$(mktemp "$STATE/add.out.XXXXXX")
    err=$(mktemp "$STATE/add.err.XXXXXX")
    say "rewind add $img $*" >&2
    # Into files, not a pipe: the daemon that `add` leaves behind may inherit stdout and
    # stderr, and $(...) would then wait for it to exit.
    timeout "$REWIND_CMD_TIMEOUT" "$REWIND" add "$img" "$@" >"$out" 2>"$err" || rc=$?
    sed 's/^/    add: /' "$out" "$err" >&2
    [[ $rc -eq 0 ]] || die "rewind add $img $* failed (rc=$rc)"
    dev=$(tail -n 1 "$out")
    [[ $dev =~ ^/dev/ublkb[0-9]+$ ]] ||
        die "rewind add $img: last line of stdout is '$dev', expected /dev/ublkbN"
    echo "${dev#/dev/ublkb}" >>"$STATE/ublk"
    wait_for_dev "$dev"
    say "$dev is up: $(blockdev --getsize64 "$dev") bytes" >&2
    echo "$dev"
}

# wait_for_dev PATH [SECONDS]: until PATH is a block device with a non-zero size. The
# node appears through devtmpfs a little after `add` returns, possibly.
wait_for_dev() {
    local dev=$1 limit=${2:-30} start=$SECONDS size
    while :; do
        if [[ -b $dev ]]; then
            size=$(blockdev --getsize64 "$dev" 2>/dev/null || echo 0)
            [[ $size -gt 0 ]] && return 0
        fi
        [[ $((SECONDS - start)) -lt $limit ]] || die "$dev did not appear within ${limit}s"
        sleep 0.2
    done
}

# del_dev /dev/ublkbN: rewind del -n N, then check the device is really gone.
del_dev() {
    local dev=$1 id start=$SECONDS
    id=${dev#/dev/ublkb}
    say "rewind del -n $id"
    rewind del -n "$id" || die "rewind del -n $id failed (rc=$?)"
    while [[ -b $dev ]]; do
        [[ $((SECONDS - start)) -lt 30 ]] || die "$dev still present 30s after rewind del -n $id"
        sleep 0.2
    done
    grep -vx "$id" "$STATE/ublk" >"$STATE/ublk.new" || true
    mv "$STATE/ublk.new" "$STATE/ublk"
}

# loop_attach IMAGE [LOSETUP OPTIONS...] -> echoes /dev/loopN (for baselines).
loop_attach() {
    local img=$1 dev
    shift
    dev=$(losetup "$@" -f --show "$img") || die "losetup $* $img failed"
    echo "$dev" >>"$STATE/loop"
    echo "$dev"
}

loop_detach() {
    losetup -d "$1" || die "losetup -d $1 failed"
    grep -vxF "$1" "$STATE/loop" >"$STATE/loop.new" || true
    mv "$STATE/loop.new" "$STATE/loop"
}

# pick_fio_engine: sets FIO_ENGINE to io_uring if this fio and kernel can use it, else
# libaio. A quick probe on a small file.
pick_fio_engine() {
    if [[ -z ${FIO_ENGINE:-} ]]; then
        local e
        for e in io_uring libaio; do
            if fio --name=probe --filename="$STATE/fio-probe" --size=64k --bs=4k --rw=write \
                --ioengine="$e" --iodepth=4 --eta=never >/dev/null 2>&1; then
                FIO_ENGINE=$e
                break
            fi
        done
        rm -f "$STATE/fio-probe"
        [[ -n ${FIO_ENGINE:-} ]] || die "fio can use neither io_uring nor libaio"
    fi
    say "fio ioengine: $FIO_ENGINE"
}

# run_fio FIO ARGS...: runs fio, shows its report, and fails if fio exits non-zero or its
# report shows an error (a job's error field, err=, or any verification failure).
# fio also writes its terse report (hidden from the console), from which this sets, summed
# over the jobs:
#   FIO_READ_KIB FIO_WRITE_KIB    data moved (KiB), verification reads included
#   FIO_READ_IOPS FIO_WRITE_IOPS  IOPS
# The full report stays in $FIO_OUT.
FIO_OUT=""
FIO_READ_KIB=0 FIO_WRITE_KIB=0 FIO_READ_IOPS=0 FIO_WRITE_IOPS=0
FIO_ERRORS='err= *[1-9]|verify: bad|verify failed|bad magic|bad header|mismatch'
run_fio() {
    local rc=0 start=$SECONDS
    FIO_OUT=$(mktemp "$STATE/fio.XXXXXX")
    say "fio $*"
    fio --eta=never --output-format=normal,terse "$@" >"$FIO_OUT" 2>&1 || rc=$?
    check_fio "$FIO_OUT" "$rc"
    say "fio done in $((SECONDS - start))s: read ${FIO_READ_KIB} KiB (${FIO_READ_IOPS} IOPS)," \
        "wrote ${FIO_WRITE_KIB} KiB (${FIO_WRITE_IOPS} IOPS)"
}

# check_fio OUT RC: what run_fio checks, for a fio run elsewhere (in the background) whose
# output (--output-format=normal,terse) is in OUT and whose exit status was RC. Sets the
# FIO_* figures and FIO_OUT.
check_fio() {
    local out=$1 rc=$2 terse n err
    FIO_OUT=$out
    grep -v '^3;fio-' "$out" || true
    [[ $rc -eq 0 ]] || die "fio exited with rc=$rc"
    if grep -Eq "$FIO_ERRORS" "$out"; then
        die "fio reported errors: $(grep -Em 5 "$FIO_ERRORS" "$out" | tr '\n' ' ')"
    fi
    # Terse v3 fields: 5 error, 6 read KiB, 8 read IOPS, 47 write KiB, 49 write IOPS.
    terse=$(awk -F';' '$1 == 3 && $2 ~ /^fio-/ {
                err += ($5 != 0); rk += $6; ri += $8; wk += $47; wi += $49; n++ }
            END { printf "%d %d %d %d %d %d\n", n, err, rk, ri, wk, wi }' "$out")
    read -r n err FIO_READ_KIB FIO_READ_IOPS FIO_WRITE_KIB FIO_WRITE_IOPS <<<"$terse"
    [[ $n -gt 0 ]] || die "fio printed no terse report: cannot check what it did"
    [[ $err -eq 0 ]] || die "fio: $err job(s) ended with an error"
}

# now_s: seconds since boot, to the hundredth (busybox date has no %N).
now_s() { cut -d' ' -f1 /proc/uptime; }

# ms_between T0 T1: milliseconds from now_s T0 to now_s T1.
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d\n", (b - a) * 1000 + 0.5 }'; }

# median N...: the median of whole numbers (the lower middle one for an even count).
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# daemon_pid ID: the pid of device ID's daemon, from its pid file.
daemon_pid() {
    sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "/run/rewind/ublkb$1.pid" 2>/dev/null || true
}

# alive PID: true while PID runs (a zombie has exited: false, unlike kill -0).
alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

# wait_exited PID [SECONDS]: until PID (a daemon just killed with kill -9) has exited; fails
# after SECONDS (default 30). SIGKILL is not instant: the process first finishes its
# syscall and tears down its threads, io_uring and memory, which on a loaded emulated
# machine has taken seconds. Until then the kernel still has its device live and `rewind
# recover` refuses ("live, served by its daemon: nothing to recover"), as the supervisor
# knows (it waits the same way before recovering).
wait_exited() {
    local pid=$1 limit=${2:-30} start=$SECONDS
    while alive "$pid"; do
        [[ $((SECONDS - start)) -lt $limit ]] || die "pid $pid still there ${limit}s after kill -9"
        sleep 0.05
    done
}

# kernel_io_errors: the kernel's I/O error lines since the scenario started.
kernel_io_errors() {
    dmesg 2>/dev/null | awk -v s="$KSTART" '{t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t)
        if (t + 0 >= s + 0) print}' | grep -Ei 'I/O error|blk_update_request|hung task' || true
}

# wait_fio_round PID OUT BYTES: waits for fio PID, a write-then-verify run started in the
# background with --output-format=normal,terse into OUT, and checks that it wrote and
# verified exactly BYTES with no error.
wait_fio_round() {
    local rc=0
    wait "$1" || rc=$?
    check_fio "$2" "$rc" >/dev/null
    fio_expect write "$3"
    fio_expect read "$3"
}

# no_kernel_io_errors: fails if the kernel logged I/O errors since the scenario started.
no_kernel_io_errors() {
    local errors
    errors=$(kernel_io_errors)
    [[ -z $errors ]] || die "the kernel logged I/O errors: $errors"
}

# fio_expect read|write BYTES: the last run_fio read (or wrote) exactly BYTES. Guards
# against a verification pass that passes because it verified nothing.
fio_expect() {
    local dir=$1 bytes=$2 kib
    case $dir in
    read) kib=$FIO_READ_KIB ;;
    write) kib=$FIO_WRITE_KIB ;;
    *) die "fio_expect: read or write, not '$dir'" ;;
    esac
    [[ $((kib * 1024)) -eq $bytes ]] ||
        die "fio was expected to $dir $bytes bytes but did $((kib * 1024))"
}

# On any exit: after a failure show what the daemon and the kernel said, then take down
# what the scenario set up, whether it passed or not.
on_exit() {
    local rc=$? id dev mnt
    set +e
    trap - ERR EXIT
    if [[ $rc -ne 0 && ! ($rc -eq 77 && $SKIPPED -eq 1) ]]; then
        say "---------- FAILED (rc=$rc): diagnostics ----------"
        if have_rewind; then
            say "rewind list:"
            timeout 30 "$REWIND" list 2>&1
            say "rewind list --json:"
            timeout 30 "$REWIND" list --json 2>&1
        fi
        for f in "$REWIND_LOG_DIR"/rewind-*.log; do
            [[ -f $f ]] || continue
            say "---------- $f (last 100 lines) ----------"
            tail -n 100 "$f"
        done
        say "---------- kernel log since the scenario started (last 60 lines) ----------"
        dmesg 2>/dev/null | awk -v s="$KSTART" '{t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t)
            if (t + 0 >= s + 0) print}' | tail -n 60
        say "---------- end of diagnostics ----------"
    fi
    # Background processes the scenario started (`echo $! >>"$STATE/pids"`), first: they
    # may use what follows.
    while read -r pid; do
        [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null
    done <"$STATE/pids"
    # Innermost mounts first.
    while read -r mnt; do
        umount "$mnt" || umount -l "$mnt"
    done < <(awk -v w="$WORKDIR" 'index($2, w "/") == 1 {print $2}' /proc/mounts | sort -r)
    while read -r id; do
        [[ -n $id ]] || continue
        say "cleanup: rewind del -n $id"
        timeout 60 "$REWIND" del -n "$id"
    done <"$STATE/ublk"
    while read -r dev; do
        [[ -n $dev ]] || continue
        say "cleanup: losetup -d $dev"
        losetup -d "$dev"
    done <"$STATE/loop"
    while read -r dev; do
        [[ -n $dev ]] || continue
        say "cleanup: qemu-nbd --disconnect $dev"
        qemu-nbd --disconnect "$dev" >/dev/null
    done <"$STATE/nbd"
    rm -rf "$WORKDIR"
    exit "$rc"
}
trap on_exit EXIT
