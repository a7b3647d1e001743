#!/bin/bash
# bench: rewind beside its peers, every target up at once over backing files of the same
# size on the same file system (/tmp, tmpfs in the guest), in one boot. Run it with
# ci/bench.sh, which also turns what this prints into the tables, the JSON and the plot
# (BENCHMARKS.md explains them). Not a pass/fail test: it fails only if nothing could be
# measured; a target that cannot run here is reported as skipped, with the reason, and a
# run that fails is reported as failed, and the others go on.
#
# Targets (BENCH_TARGETS, in this order):
#   rewind     rewind add IMG --size SIZE, at its defaults
#   rewind-copy  the same with --data-path copy: where the default is zero copy (6.16+),
#              what zero copy gains; skipped where the default is copy already
#   rewind-stop  the same with --on-crash stop: no journal record before a write completes,
#              so what the per-write record of the default (--on-crash queue) costs
#   rublk      rublk add loop -f FILE, at its defaults (1 queue, depth 128, direct I/O)
#   rublk-zc   the same with -z (zero copy, UBLK_F_AUTO_BUF_REG): kernel 6.16 or later
#   rublk-q    the same with -q N, N = the queues rewind chose (its default: one per 4 CPUs);
#              skipped when that is 1, rublk's own default
#   loop       the kernel loop device, direct I/O on if the kernel allows it over /tmp
#   thin       dm-thin: a thin volume of a thin pool (64 KiB blocks) over two loop devices
#   thin-snap  the same, with a snapshot of the volume taken every second during each
#              measured run (suspend, create_snap, resume); before each new one the oldest
#              is deleted so that at most BENCH_SNAP_KEEP (2) exist
#   dm-snap    classic dm-snapshot: the snapshot-origin device over a loop device, with a
#              persistent snapshot (4 KiB chunks) on a second loop device, taken afresh just
#              before each measured run: every first write to a chunk copies it to the COW
# Workloads (BENCH_WORKLOADS), fio with ioengine io_uring and direct=1 on the device:
#   randwrite  4 KiB random writes, QD32          randread  4 KiB random reads, QD32
#   fsync32    4 KiB random writes, QD32, an fsync (a FLUSH) after every 32 writes
#   seqwrite   1 MiB sequential writes, QD8       seqread   1 MiB sequential reads, QD8
#   randrw     4 KiB random 70% reads / 30% writes, QD32
#   lat        4 KiB random writes at QD1 (latency)
#
# Plan: set up every target and prefill it (1 MiB sequential writes over all of it, so
# reads hit data), one short warm-up run per target (BENCH_WARMUP seconds of randrw), then
# BENCH_REPS repetitions of: for each workload, for each target, one fio run of
# BENCH_RAMP + BENCH_RUNTIME seconds. Interleaved so that drifts of the emulation speed hit
# every target alike.
#
# Output: one "BENCHJSON {...}" line per fact (config, target, run, end), which ci/bench.sh
# (ci/bench-report.py) collects from the console; the rest is for people. Per run, besides
# fio's figures: the I/Os and bytes the device itself served (/sys/block/DEV/stat), the CPU
# time of the serving daemon (utime + stime of every process holding /dev/ublkcN, all
# threads; none for the kernel targets), and the bytes written below the device: rewind's
# image_bytes_written (rewind stats --json; absent in older builds) or the sectors written
# to the backing loop devices of the dm targets.
#
# Environment (ci/bench.sh passes them with --env):
#   BENCH_TARGETS BENCH_WORKLOADS  space- or comma-separated subsets of the above
#   BENCH_SIZE_MIB  size of every device (default 512)
#   BENCH_RUNTIME   measured seconds per run (default 8), after BENCH_RAMP (default 2)
#   BENCH_REPS      repetitions (default 3)
#   BENCH_WARMUP    seconds of the warm-up run per target (default 3; 0: none)
#   BENCH_SNAP_KEEP thin-snap: snapshots kept at most (default 2)
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

ALL_TARGETS=(rewind rewind-copy rewind-stop rublk rublk-zc rublk-q loop thin thin-snap dm-snap)
ALL_WORKLOADS=(randwrite randread fsync32 seqwrite seqread randrw lat)
read -r -a TARGETS <<<"${BENCH_TARGETS:-${ALL_TARGETS[*]}}"
read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-${ALL_WORKLOADS[*]}}"
# Commas as well as spaces.
read -r -a TARGETS <<<"${TARGETS[*]//,/ }"
read -r -a WORKLOADS <<<"${WORKLOADS[*]//,/ }"
SIZE_MIB=${BENCH_SIZE_MIB:-512}
RUNTIME=${BENCH_RUNTIME:-8}
RAMP=${BENCH_RAMP:-2}
REPS=${BENCH_REPS:-3}
WARMUP=${BENCH_WARMUP:-3}
SNAP_KEEP=${BENCH_SNAP_KEEP:-2}
for v in SIZE_MIB RUNTIME RAMP REPS WARMUP SNAP_KEEP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_$v wants a whole number, got '${!v}'"
done
[[ $RUNTIME -ge 1 && $REPS -ge 1 && $SNAP_KEEP -ge 1 ]] || die "BENCH_RUNTIME, BENCH_REPS and BENCH_SNAP_KEEP must be at least 1"
[[ $SIZE_MIB -ge 64 ]] || die "BENCH_SIZE_MIB must be at least 64"
in_list() {
    local x=$1 y
    shift
    for y in "$@"; do [[ $x == "$y" ]] && return 0; done
    return 1
}
[[ ${#TARGETS[@]} -gt 0 && ${#WORKLOADS[@]} -gt 0 ]] || die "no target or no workload given"
for t in "${TARGETS[@]}"; do
    in_list "$t" "${ALL_TARGETS[@]}" || die "unknown target '$t' (known: ${ALL_TARGETS[*]})"
done
for w in "${WORKLOADS[@]}"; do
    in_list "$w" "${ALL_WORKLOADS[@]}" || die "unknown workload '$w' (known: ${ALL_WORKLOADS[*]})"
done
# Always in the documented order, whatever order they were given in: rublk-q needs to
# know rewind's queues.
ordered=()
for t in "${ALL_TARGETS[@]}"; do in_list "$t" "${TARGETS[@]}" && ordered+=("$t"); done
TARGETS=("${ordered[@]}")

SIZE=$((SIZE_MIB << 20))
SECTORS=$((SIZE >> 9))
# dmsetup without udev: it makes the /dev/mapper nodes itself and waits for no one.
export DM_DISABLE_UDEV=1
# Names of the dm devices: rwbench-*, so that on a host they stand out and clash with nothing.
DM=rwbench

# ---------------------------------------------------------------- output
# json_str TEXT: TEXT as a JSON string.
json_str() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/ }
    s=${s//$'\t'/ }
    printf '"%s"' "$s"
}
# json_num VALUE: VALUE if it is a number, else null.
json_num() {
    if [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then printf '%s' "$1"; else printf 'null'; fi
}
emit() { printf 'BENCHJSON %s\n' "$1"; }

declare -A DEV LABEL TSTATE PIDS BACKS UBLK_ID
# target_state NAME ready|skipped|failed TEXT: record and print what became of a target.
target_state() {
    local name=$1 state=$2 text=$3
    TSTATE[$name]=$state
    case $state in
    ready) say "[$name] ready: $text" ;;
    skipped) say "[$name] SKIPPED: $text" ;;
    *) say "[$name] FAILED: $text" ;;
    esac
    emit "{\"kind\":\"target\",\"target\":$(json_str "$name"),\"label\":$(json_str "${LABEL[$name]:-$name}"),\"state\":$(json_str "$state"),\"detail\":$(json_str "$text")}"
}

# ---------------------------------------------------------------- helpers
# sysname DEV: its name under /sys/block (dm-3 for /dev/mapper/x, which dmsetup makes as
# a device node of its own when there is no udev, not as a link), found by its numbers.
sysname() {
    local mm
    mm=$(stat -L -c '%t %T' "$1") || return 1
    basename "$(readlink "/sys/dev/block/$((16#${mm% *})):$((16#${mm#* }))")"
}

# dev_counts DEV: "IOS READ_SECTORS WRITE_SECTORS": reads + writes completed, sectors read,
# sectors written, so far.
dev_counts() {
    awk '{print $1 + $5, $3, $7}' "/sys/block/$(sysname "$1")/stat"
}

# server_pids ID: the processes holding /dev/ublkcID open (the daemon serving it).
server_pids() {
    local p fd pids=()
    for p in /proc/[0-9]*; do
        for fd in "$p"/fd/*; do
            if [[ $(readlink "$fd" 2>/dev/null) == "/dev/ublkc$1" ]]; then
                pids+=("${p#/proc/}")
                break
            fi
        done
    done
    echo "${pids[*]}"
}

# cpu_ticks PID...: utime + stime of these processes, all their threads, in clock ticks
# (USER_HZ, 100 a second); "-" if one of them is gone.
cpu_ticks() {
    local p total=0 f
    for p in "$@"; do
        # Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
        f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || { echo -; return; }
        total=$((total + $(awk '{print $12 + $13}' <<<"$f")))
    done
    echo "$total"
}

# image_written ID: what rewind wrote to the image of /dev/ublkbID (data + metadata, from
# rewind stats --json), or "-" if its stats do not have those fields (an older build).
image_written() {
    local out
    out=$(timeout 30 "$REWIND" stats -n "$1" --json 2>/dev/null) || { echo -; return; }
    local data meta
    data=$(sed -n 's/.*"image_data_bytes_written": *\([0-9][0-9]*\).*/\1/p' <<<"$out")
    meta=$(sed -n 's/.*"image_metadata_bytes_written": *\([0-9][0-9]*\).*/\1/p' <<<"$out")
    if [[ -n $data && -n $meta ]]; then echo $((data + meta)); else echo -; fi
}

# backs_written NAME: sectors written so far to the loop devices under a dm target.
backs_written() {
    local d total=0
    for d in ${BACKS[$1]}; do
        total=$((total + $(awk '{print $7}' "/sys/block/$(sysname "$d")/stat")))
    done
    echo "$total"
}

# attach IMG: a loop device over IMG, direct I/O on if the kernel allows it over this
# file system. Sets REPLY to the device and LOOP_DIO to on or off.
attach() {
    local img=$1 dev=""
    if dev=$(loop_attach "$img" --direct-io=on 2>/dev/null) &&
        [[ $(cat "/sys/block/${dev#/dev/}/loop/dio" 2>/dev/null) == 1 ]]; then
        REPLY=$dev LOOP_DIO=on
        return 0
    fi
    [[ -z $dev ]] || loop_detach "$dev"
    dev=$(loop_attach "$img") || return 1
    REPLY=$dev LOOP_DIO=off
}

# backing_file NAME SUFFIX BYTES: an empty (sparse) file for a target, its path in REPLY.
backing_file() {
    REPLY=$WORKDIR/$1$2.img
    rm -f "$REPLY"
    truncate -s "$3" "$REPLY"
}

# fio_terse FILE: the figures of a fio terse (v3) report, summed over its jobs:
# "READ_KIB READ_KIBS READ_IOPS READ_LAT_US READ_P99_US WRITE_KIB WRITE_KIBS WRITE_IOPS
#  WRITE_LAT_US WRITE_P99_US ERRORS JOBS". Latencies: total latency mean and completion
# latency 99th percentile, in microseconds (fio's terse unit).
fio_terse() {
    awk -F';' '$1 == 3 && $2 ~ /^fio-/ {
        n++; err += ($5 != 0)
        rk += $6; rb += $7; ri += $8; rl = $40
        wk += $47; wb += $48; wi += $49; wl = $81
        for (i = 18; i <= 37; i++) if ($i ~ /^99\.000000%=/) { split($i, a, "="); rp = a[2] }
        for (i = 59; i <= 78; i++) if ($i ~ /^99\.000000%=/) { split($i, a, "="); wp = a[2] }
    } END { printf "%d %d %d %.1f %d %d %d %d %.1f %d %d %d\n", rk, rb, ri, rl, rp, wk, wb, wi, wl, wp, err, n }' "$1"
}

# workload_args NAME: fio options of a workload.
workload_args() {
    case $1 in
    randwrite) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    randread) echo "--rw=randread --bs=4k --iodepth=32" ;;
    fsync32) echo "--rw=randwrite --bs=4k --iodepth=32 --fsync=32" ;;
    seqwrite) echo "--rw=write --bs=1M --iodepth=8" ;;
    seqread) echo "--rw=read --bs=1M --iodepth=8" ;;
    randrw) echo "--rw=randrw --rwmixread=70 --bs=4k --iodepth=32" ;;
    lat) echo "--rw=randwrite --bs=4k --iodepth=1" ;;
    esac
}

# ---------------------------------------------------------------- targets
REWIND_QUEUES=""

# setup_rewind NAME [ARGS...]: rewind add IMG --size SIZE ARGS.
setup_rewind() {
    local name=$1 dev path
    shift
    dev=$(add_dev "$WORKDIR/$name.img" --size "${SIZE_MIB}M" "$@") || { REPLY="rewind add failed (its output is above)"; return 1; }
    DEV[$name]=$dev
    UBLK_ID[$name]=${dev#/dev/ublkb}
    path=$("$REWIND" stats -n "${dev#/dev/ublkb}" --json | sed -n 's/.*"data_path": *"\([a-z-]*\)".*/\1/p')
    [[ $name != rewind ]] || REWIND_DATA_PATH=$path
    [[ $name != rewind ]] || REWIND_QUEUES=$(find "/sys/block/${dev#/dev/}/mq" -mindepth 1 -maxdepth 1 | wc -l)
    REPLY="$dev over $WORKDIR/$name.img ($(du -m "$WORKDIR/$name.img" | cut -f1) MiB image), $(find "/sys/block/${dev#/dev/}/mq" -mindepth 1 -maxdepth 1 | wc -l) queues, data path ${path:-unknown}"
}

RUBLK_IDS=()
# setup_rublk NAME ARGS...: rublk add loop -f FILE ARGS.
setup_rublk() {
    local name=$1 out rc=0 id dev
    shift
    if ! type -P rublk >/dev/null; then
        REPLY="no rublk in the guest (ci/bench.sh builds it with ci/setup.sh --bench and passes --with rublk=PATH to ci/guest.sh)"
        return 2
    fi
    backing_file "$name" "" "$SIZE"
    out=$STATE/rublk-$name.out
    say "[$name] rublk add loop -f $REPLY $*"
    # Into a file, not a pipe: the daemon it leaves behind may keep its stdout open.
    timeout "$REWIND_CMD_TIMEOUT" rublk add loop -f "$REPLY" "$@" >"$out" 2>&1 || rc=$?
    sed 's/^/    rublk: /' "$out"
    [[ $rc -eq 0 ]] || { REPLY="rublk add loop $* failed (rc=$rc): $(tail -n 1 "$out")"; return 1; }
    id=$(sed -n 's/^dev id \([0-9][0-9]*\):.*/\1/p' "$out" | head -n 1)
    [[ -n $id ]] || { REPLY="rublk add printed no 'dev id N:' line"; return 1; }
    RUBLK_IDS+=("$id")
    dev=/dev/ublkb$id
    (wait_for_dev "$dev") || { REPLY="$dev did not appear"; return 1; }
    DEV[$name]=$dev
    UBLK_ID[$name]=$id
    REPLY="$dev over $WORKDIR/$name.img, $(find "/sys/block/ublkb$id/mq" -mindepth 1 -maxdepth 1 | wc -l) queue(s)${*:+, options $*}"
}

setup_loop() {
    backing_file loop "" "$SIZE"
    attach "$REPLY" || { REPLY="losetup failed"; return 1; }
    DEV[loop]=$REPLY
    REPLY="$REPLY over $WORKDIR/loop.img, direct I/O $LOOP_DIO"
}

# setup_thin NAME POOL_BYTES: a thin pool over two loop devices and one thin volume.
setup_thin() {
    local name=$1 pool_bytes=$2 data meta ddio
    local pool=$DM-$name-pool vol=$DM-$name
    (load_module dm-thin-pool) || { REPLY="dm-thin-pool module not available"; return 2; }
    type -P dmsetup >/dev/null || { REPLY="no dmsetup in the guest (ci/bench.sh passes --with dmsetup=PATH)"; return 2; }
    backing_file "$name" -data "$pool_bytes"
    attach "$REPLY" || { REPLY="losetup failed"; return 1; }
    data=$REPLY ddio=$LOOP_DIO
    # Metadata: far more than 3 mappings of every block need (about 100 bytes each).
    backing_file "$name" -meta $((32 << 20))
    attach "$REPLY" || { REPLY="losetup failed"; return 1; }
    meta=$REPLY
    BACKS[$name]="$data $meta"
    # 128 sectors: 64 KiB blocks (LVM's default chunk size); low water mark 64 blocks;
    # error_if_no_space: a full pool fails I/O at once instead of queueing it for 60 s.
    dmsetup create "$pool" --table "0 $((pool_bytes >> 9)) thin-pool $meta $data 128 64 1 error_if_no_space" ||
        { REPLY="dmsetup create $pool failed"; return 1; }
    DM_DEVS+=("$pool")
    dmsetup message "$pool" 0 "create_thin 0" || { REPLY="create_thin failed"; return 1; }
    dmsetup create "$vol" --table "0 $SECTORS thin /dev/mapper/$pool 0" ||
        { REPLY="dmsetup create $vol failed"; return 1; }
    DM_DEVS+=("$vol")
    DEV[$name]=/dev/mapper/$vol
    REPLY="/dev/mapper/$vol ($(sysname "/dev/mapper/$vol")), pool of $((pool_bytes >> 20)) MiB data ($data, direct I/O $ddio) + 32 MiB metadata ($meta), 64 KiB blocks"
}

setup_dmsnap() {
    local origin cow
    (load_module dm-snapshot) || { REPLY="dm-snapshot module not available"; return 2; }
    type -P dmsetup >/dev/null || { REPLY="no dmsetup in the guest (ci/bench.sh passes --with dmsetup=PATH)"; return 2; }
    backing_file dm-snap -origin "$SIZE"
    attach "$REPLY" || { REPLY="losetup failed"; return 1; }
    origin=$REPLY
    # The COW holds at most every chunk once, plus a metadata chunk per 256 of them.
    backing_file dm-snap -cow $((SIZE + SIZE / 128 + (4 << 20)))
    attach "$REPLY" || { REPLY="losetup failed"; return 1; }
    cow=$REPLY
    BACKS[dm-snap]="$origin $cow"
    DMSNAP_ORIGIN=$origin DMSNAP_COW=$cow
    dmsetup create "$DM-origin" --table "0 $SECTORS snapshot-origin $origin" ||
        { REPLY="dmsetup create $DM-origin failed"; return 1; }
    DM_DEVS+=("$DM-origin")
    DEV[dm-snap]=/dev/mapper/$DM-origin
    REPLY="/dev/mapper/$DM-origin ($(sysname "/dev/mapper/$DM-origin")) over $origin (direct I/O $LOOP_DIO), snapshot COW $cow, 4 KiB chunks, persistent"
}

# dmsnap_arm: a fresh snapshot of the dm-snap origin (the previous one, if any, dropped):
# from now on every first write to a chunk of the origin copies the chunk to the COW.
DMSNAP_ARMED=0
dmsnap_arm() {
    local o=$DM-origin s=$DM-snap
    if [[ $DMSNAP_ARMED -eq 1 ]]; then
        dmsetup suspend "$o" && dmsetup remove "$s" && dmsetup resume "$o" || return 1
        DMSNAP_ARMED=0
        DM_DEVS=("${DM_DEVS[@]/$s/}")
    fi
    # A COW whose first chunk is zeros is a new, empty snapshot store.
    dd if=/dev/zero of="$DMSNAP_COW" bs=4096 count=1 conv=fsync 2>/dev/null || return 1
    dmsetup suspend "$o" || return 1
    if ! dmsetup create "$s" --table "0 $SECTORS snapshot $DMSNAP_ORIGIN $DMSNAP_COW P 8"; then
        dmsetup resume "$o"
        return 1
    fi
    DMSNAP_ARMED=1
    DM_DEVS+=("$s")
    dmsetup resume "$o"
}

# The thin-snap snapshotter: in the background during a measured run, every second: delete
# the oldest snapshots down to SNAP_KEEP - 1, then suspend the volume, create_snap, resume.
SNAP_NEXT=1
snapper() {
    set +e
    trap - ERR EXIT
    local pool=$DM-thin-snap-pool vol=$DM-thin-snap ids=() taken=0 fails=0 id
    while :; do
        sleep 1
        [[ -e $STATE/snap.stop ]] && break
        while [[ ${#ids[@]} -ge $SNAP_KEEP ]]; do
            dmsetup message "$pool" 0 "delete ${ids[0]}" || fails=$((fails + 1))
            ids=("${ids[@]:1}")
        done
        if timeout 30 dmsetup suspend "$vol"; then
            if dmsetup message "$pool" 0 "create_snap $SNAP_NEXT 0"; then
                ids+=("$SNAP_NEXT")
                taken=$((taken + 1))
            else
                fails=$((fails + 1))
            fi
        else
            fails=$((fails + 1))
        fi
        dmsetup resume "$vol" || fails=$((fails + 1))
        SNAP_NEXT=$((SNAP_NEXT + 1))
    done
    for id in "${ids[@]}"; do dmsetup message "$pool" 0 "delete $id" || fails=$((fails + 1)); done
    echo "$taken $fails $SNAP_NEXT" >"$STATE/snap.result"
}

# ---------------------------------------------------------------- one run
# prefill NAME: 1 MiB sequential writes over the whole device.
prefill() {
    local name=$1 out=$STATE/prefill-$1.out rc=0 t0=$SECONDS f
    say "[$name] prefill ${DEV[$name]}: 1 MiB sequential writes over all $SIZE_MIB MiB"
    fio --name="prefill-$name" --filename="${DEV[$name]}" --ioengine="$FIO_ENGINE" --direct=1 \
        --iodepth=8 --rw=write --bs=1M --eta=never --output-format=terse >"$out" 2>&1 || rc=$?
    read -r -a f <<<"$(fio_terse "$out")"
    if [[ $rc -ne 0 || ${f[10]} -ne 0 || ${f[11]} -eq 0 || $((f[5] * 1024)) -ne $SIZE ]]; then
        REPLY="prefill failed (fio rc=$rc, wrote $((f[5] * 1024)) of $SIZE bytes): $(grep -v '^3;' "$out" | tail -n 3 | tr '\n' ' ')"
        return 1
    fi
    say "[$name] prefilled in $((SECONDS - t0))s"
}

# measure NAME WORKLOAD REP: one fio run (REP 0: the warm-up, reported but not counted).
measure() {
    local name=$1 w=$2 rep=$3 dev=${DEV[$1]} out=$STATE/run.out rc=0 err=""
    local runtime=$RUNTIME ramp=$RAMP c0 c1 cpu0=- cpu1=- img0=- img1=- b0=- b1=- f args
    local snaps=null snapfails=null note=""
    if [[ $rep -eq 0 ]]; then runtime=$WARMUP ramp=0; fi
    if [[ $name == dm-snap ]]; then
        dmsnap_arm || err="could not take the dm-snapshot snapshot"
    fi
    read -r -a args <<<"$(workload_args "$w")"
    c0=$(dev_counts "$dev")
    if [[ -n ${PIDS[$name]:-} ]]; then
        # shellcheck disable=SC2086 # one word per pid
        cpu0=$(cpu_ticks ${PIDS[$name]})
    fi
    if [[ $name == rewind* ]]; then img0=$(image_written "${UBLK_ID[$name]}"); fi
    if [[ -n ${BACKS[$name]:-} ]]; then b0=$(backs_written "$name"); fi
    if [[ $name == thin-snap ]]; then
        rm -f "$STATE/snap.stop" "$STATE/snap.result"
        snapper &
        SNAP_PID=$!
    fi
    if [[ -z $err ]]; then
        fio --name="$name-$w" --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 "${args[@]}" \
            --norandommap --randrepeat=0 --time_based --runtime="$runtime" --ramp_time="$ramp" \
            --group_reporting --eta=never --output-format=terse >"$out" 2>&1 || rc=$?
    fi
    if [[ $name == thin-snap ]]; then
        touch "$STATE/snap.stop"
        wait "$SNAP_PID" || true
        if read -r snaps snapfails SNAP_NEXT <"$STATE/snap.result"; then
            [[ $snapfails -eq 0 ]] || note="$snapfails snapshot operations FAILED"
        else
            snaps=null snapfails=null note="snapshotter left no result"
        fi
    fi
    c1=$(dev_counts "$dev")
    if [[ $cpu0 != - ]]; then
        # shellcheck disable=SC2086 # one word per pid
        cpu1=$(cpu_ticks ${PIDS[$name]})
    fi
    if [[ $name == rewind* ]]; then img1=$(image_written "${UBLK_ID[$name]}"); fi
    if [[ $b0 != - ]]; then b1=$(backs_written "$name"); fi
    read -r -a f <<<"$(fio_terse "$out")"
    if [[ -z $err ]]; then
        if [[ $rc -ne 0 || ${f[10]} -ne 0 || ${f[11]} -eq 0 ]]; then
            err="fio rc=$rc: $(grep -v '^3;' "$out" | grep -v '^ *$' | tail -n 3 | tr '\n' ' ')"
        fi
    fi
    case $name in
    thin | thin-snap)
        local st
        st=$(dmsetup status "$DM-$name-pool" 2>/dev/null | awk '{print "data " $6 ", " $8}') || true
        note="${note:+$note; }pool $st"
        ;;
    dm-snap)
        note="COW $(dmsetup status "$DM-snap" 2>/dev/null | awk '{print $4}' || true) sectors used/total"
        ;;
    esac
    local ios rsec wsec cpu=null img=null backs=null
    ios=$(($(cut -d' ' -f1 <<<"$c1") - $(cut -d' ' -f1 <<<"$c0")))
    rsec=$(($(cut -d' ' -f2 <<<"$c1") - $(cut -d' ' -f2 <<<"$c0")))
    wsec=$(($(cut -d' ' -f3 <<<"$c1") - $(cut -d' ' -f3 <<<"$c0")))
    if [[ $cpu0 != - && $cpu1 != - ]]; then cpu=$((cpu1 - cpu0)); fi
    if [[ $img0 != - && $img1 != - ]]; then img=$((img1 - img0)); fi
    if [[ $b0 != - && $b1 != - ]]; then backs=$(((b1 - b0) * 512)); fi
    emit "{\"kind\":\"run\",\"target\":$(json_str "$name"),\"workload\":$(json_str "$w"),\"rep\":$rep,\"ok\":$([[ -z $err ]] && echo true || echo false),\"error\":$([[ -n $err ]] && json_str "$err" || echo null),\"runtime_s\":$runtime,\"ramp_s\":$ramp,\"read_kib\":${f[0]},\"read_kib_s\":${f[1]},\"read_iops\":${f[2]},\"read_lat_us\":${f[3]},\"read_p99_us\":${f[4]},\"write_kib\":${f[5]},\"write_kib_s\":${f[6]},\"write_iops\":${f[7]},\"write_lat_us\":${f[8]},\"write_p99_us\":${f[9]},\"dev_ios\":$ios,\"dev_read_bytes\":$((rsec * 512)),\"dev_write_bytes\":$((wsec * 512)),\"cpu_ticks\":$(json_num "$cpu"),\"clk_tck\":100,\"image_bytes_written\":$(json_num "$img"),\"backing_bytes_written\":$(json_num "$backs"),\"snapshots\":$(json_num "$snaps"),\"snapshot_failures\":$(json_num "$snapfails"),\"note\":$(json_str "$note")}"
    local what cputext=""
    [[ $cpu == null ]] || cputext="daemon CPU $cpu ticks, "
    [[ $snaps == null ]] || cputext="$snaps snapshots taken, "
    what="read ${f[2]} IOPS ${f[1]} KiB/s p99 ${f[4]} us, write ${f[7]} IOPS ${f[6]} KiB/s p99 ${f[9]} us; ${cputext}device: $ios requests, $((rsec >> 11)) MiB read, $((wsec >> 11)) MiB written${note:+; $note}"
    if [[ -n $err ]]; then
        say "[$name] $w rep $rep FAILED: $err"
        FAILED_RUNS=$((FAILED_RUNS + 1))
    elif [[ $rep -eq 0 ]]; then
        say "[$name] warm-up $w ${runtime}s: $what"
    else
        say "[$name] $w rep $rep: $what"
        GOOD_RUNS=$((GOOD_RUNS + 1))
    fi
}

# ---------------------------------------------------------------- cleanup
DM_DEVS=()
bench_cleanup() {
    local d i id
    # dm devices in reverse order of creation (volumes before their pool).
    for ((i = ${#DM_DEVS[@]} - 1; i >= 0; i--)); do
        d=${DM_DEVS[i]}
        [[ -n $d ]] || continue
        dmsetup remove "$d" 2>/dev/null || { dmsetup resume "$d" 2>/dev/null; dmsetup remove "$d" || say "cleanup: dmsetup remove $d failed"; }
    done
    DM_DEVS=()
    for id in "${RUBLK_IDS[@]}"; do
        timeout 60 rublk del -n "$id" >/dev/null || say "cleanup: rublk del -n $id failed"
    done
    RUBLK_IDS=()
}
# lib.sh's on_exit then deletes the rewind devices and detaches the loop devices.
trap 'rc=$?; set +e; bench_cleanup; (exit $rc); on_exit' EXIT

# ---------------------------------------------------------------- main
pick_fio_engine
[[ $FIO_ENGINE == io_uring ]] || say "WARNING: fio cannot use io_uring here: using $FIO_ENGINE instead"
NCPU=$(nproc)
say "kernel $KERNEL_RELEASE, $NCPU CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB;" \
    "targets: ${TARGETS[*]}; workloads: ${WORKLOADS[*]}; ${SIZE_MIB} MiB each;" \
    "${RAMP}s + ${RUNTIME}s per run; $REPS reps; warm-up ${WARMUP}s"

# Room on /tmp for every backing file, as they will be once written (tmpfs: RAM).
need=0
for t in "${TARGETS[@]}"; do
    case $t in
    rewind | rewind-copy | rewind-stop) need=$((need + SIZE + (SIZE / 4 > 64 << 20 ? SIZE / 4 : 64 << 20) + SIZE / 50)) ;;
    thin) need=$((need + SIZE + (64 << 20) + (32 << 20))) ;;
    thin-snap) need=$((need + (SNAP_KEEP + 1) * SIZE + (64 << 20) + (32 << 20))) ;;
    dm-snap) need=$((need + 2 * SIZE + SIZE / 128 + (4 << 20))) ;;
    *) need=$((need + SIZE)) ;;
    esac
done
free=$(df -k "$WORKDIR" | awk 'NR == 2 {print $4 * 1024}')
say "backing files will take about $((need >> 20)) MiB of the $((free >> 20)) MiB free on $SCRATCH"
[[ $need -lt $free ]] ||
    die "not enough room on $SCRATCH for the backing files: $((need >> 20)) MiB needed, $((free >> 20)) MiB free; give the guest more memory (ci/bench.sh --mem) or use a smaller --size-mib"

emit "{\"kind\":\"config\",\"kernel\":$(json_str "$KERNEL_RELEASE"),\"kernel_series\":$(json_str "$KERNEL_VERSION"),\"cpus\":$NCPU,\"mem_mib\":$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo),\"size_mib\":$SIZE_MIB,\"runtime_s\":$RUNTIME,\"ramp_s\":$RAMP,\"reps\":$REPS,\"warmup_s\":$WARMUP,\"snap_keep\":$SNAP_KEEP,\"engine\":$(json_str "$FIO_ENGINE"),\"targets\":[$(printf '"%s",' "${TARGETS[@]}" | sed 's/,$//')],\"workloads\":[$(printf '"%s",' "${WORKLOADS[@]}" | sed 's/,$//')],\"rewind\":$(json_str "$( (have_rewind && "$REWIND" --version) 2>/dev/null || echo none)"),\"rublk\":$(json_str "$(rublk --version 2>/dev/null || echo none)")}"

# setup NAME: set the target up and prefill it; report what became of it.
setup() {
    local name=$1 rc=0 q
    LABEL[$name]=$name
    case $name in
    rewind) setup_rewind rewind || rc=$? ;;
    rewind-copy)
        if [[ ${REWIND_DATA_PATH:-} == copy ]]; then
            REPLY="skipped: rewind's default data path is copy on this kernel already" rc=2
        else
            setup_rewind rewind-copy --data-path copy || rc=$?
        fi
        ;;
    rewind-stop) setup_rewind rewind-stop --on-crash stop || rc=$? ;;
    rublk) setup_rublk rublk || rc=$? ;;
    rublk-zc)
        if kernel_at_least 6.16; then
            setup_rublk rublk-zc -z || rc=$?
        else
            REPLY="skipped on $KERNEL_VERSION: needs 6.16 (rublk -z uses UBLK_F_AUTO_BUF_REG)" rc=2
        fi
        ;;
    rublk-q)
        if [[ -n $REWIND_QUEUES ]]; then
            q=$REWIND_QUEUES
        else
            q=$((NCPU / 4 < 1 ? 1 : (NCPU / 4 > 4 ? 4 : NCPU / 4)))
            say "[rublk-q] rewind is not set up here: -q $q, rewind's default (one per 4 CPUs, 1 to 4)"
        fi
        LABEL[$name]="rublk -q $q"
        if [[ $q -eq 1 ]]; then
            REPLY="skipped: rewind runs 1 queue here, as rublk does by default (the rublk row)" rc=2
        else
            setup_rublk rublk-q -q "$q" || rc=$?
        fi
        ;;
    loop) setup_loop || rc=$? ;;
    thin) setup_thin thin $((SIZE + (64 << 20))) || rc=$? ;;
    thin-snap) setup_thin thin-snap $(((SNAP_KEEP + 1) * SIZE + (64 << 20))) || rc=$? ;;
    dm-snap) setup_dmsnap || rc=$? ;;
    esac
    if [[ $rc -eq 2 ]]; then
        target_state "$name" skipped "$REPLY"
        return 0
    elif [[ $rc -ne 0 ]]; then
        target_state "$name" failed "$REPLY"
        return 0
    fi
    local detail=$REPLY
    if [[ -n ${UBLK_ID[$name]:-} ]]; then
        PIDS[$name]=$(server_pids "${UBLK_ID[$name]}")
        if [[ -z ${PIDS[$name]} ]]; then
            say "[$name] WARNING: no process holds /dev/ublkc${UBLK_ID[$name]}: no CPU figures"
        else
            detail="$detail, daemon pid ${PIDS[$name]}"
        fi
    fi
    if ! prefill "$name"; then
        target_state "$name" failed "$REPLY"
        return 0
    fi
    target_state "$name" ready "$detail"
}

for t in "${TARGETS[@]}"; do setup "$t"; done
READY=()
for t in "${TARGETS[@]}"; do [[ ${TSTATE[$t]} == ready ]] && READY+=("$t"); done
[[ ${#READY[@]} -gt 0 ]] || die "no target could be set up"

GOOD_RUNS=0 FAILED_RUNS=0
if [[ $WARMUP -gt 0 ]]; then
    say "warm-up: ${WARMUP}s of randrw on each target"
    for t in "${READY[@]}"; do measure "$t" randrw 0; done
fi
t_runs=$SECONDS
total=$((REPS * ${#WORKLOADS[@]} * ${#READY[@]}))
done_runs=0
for ((rep = 1; rep <= REPS; rep++)); do
    for w in "${WORKLOADS[@]}"; do
        for t in "${READY[@]}"; do
            measure "$t" "$w" "$rep"
            done_runs=$((done_runs + 1))
        done
        say "progress: $done_runs of $total runs, about $(((SECONDS - t_runs) * (total - done_runs) / done_runs))s to go"
    done
done
emit "{\"kind\":\"end\",\"seconds\":$SECONDS,\"good_runs\":$GOOD_RUNS,\"failed_runs\":$FAILED_RUNS}"
say "done in ${SECONDS}s: $GOOD_RUNS runs measured, $FAILED_RUNS failed"
[[ $GOOD_RUNS -gt 0 ]] || die "no run succeeded"
