#!/bin/bash
# ci/bench.sh: rewind beside its peers, in one qemu guest boot per kernel.
#
# Targets, each a block device over a backing file of the same size on the guest's /tmp:
#   rewind     rewind at its defaults (rewind add IMG --size SIZE)
#   rewind-stop  the same with --on-crash stop (no journal record before a write completes)
#   rewind-copy  the same with --data-path copy, where the default is zero copy (6.16+; skipped
#              on 6.12, where the default is copy already)
#   rublk      rublk's loop target at its defaults (rublk add loop -f FILE: 1 queue)
#   rublk-zc   the same with -z, zero copy (kernel 6.16 or later: skipped on 6.12)
#   rublk-q    the same with -q N, N = the number of queues rewind chose (skipped when
#              that is 1, rublk's own default)
#   loop       the kernel loop device, direct I/O on where the kernel allows it
#   thin       dm-thin, no snapshot
#   thin-snap  dm-thin with a snapshot taken every second during each run (at most 2 kept)
#   dm-snap    classic dm-snapshot: the origin, with a snapshot taken just before each run
# Workloads (fio, io_uring, direct=1; every device prefilled first so reads hit data):
#   randwrite randread  4 KiB random, QD32     fsync32  4 KiB random writes, fsync every 32
#   seqwrite seqread    1 MiB sequential, QD8  randrw   4 KiB random 70/30 read/write, QD32
#   lat                 4 KiB random writes at QD1
# After a short warm-up, REPS repetitions, each running every workload on every target in
# turn (all devices up at once). Reported per target and workload: median, min and max over
# the repetitions, the ratio of the median to rublk's and to loop's, the p99 completion
# latency, the serving daemon's CPU time per I/O (ublk targets), and the bytes written
# below the device per byte written to it (rewind; the dm targets). BENCHMARKS.md explains
# every column and how to read the figures.
#
# Results, per kernel, in ci/work (or --out DIR):
#   bench-<kernel>-<date>.md    the tables (also printed at the end)
#   bench-<kernel>-<date>.json  the same figures, and every run
#   bench-<kernel>-<date>.png   per workload, each target's median relative to rublk
#   bench-<kernel>-<date>.log   the guest's console
#
# usage: ci/bench.sh [options]
#   --kernel K       6.18 (default), 6.12, or both (6.12 then 6.18: two boots, one command)
#   --runtime S      measured seconds per run (default 8)
#   --ramp S         seconds of each run before measuring starts (default 2)
#   --reps N         repetitions (default 3; fewer than 3 gives no meaningful spread)
#   --warmup S       seconds of the warm-up run per target (default 3; 0: none)
#   --size-mib N     size of every device (default 512)
#   --targets LIST   comma-separated subset of the targets above (default: all)
#   --workloads LIST comma-separated subset of the workloads above (default: all)
#   --mem SIZE       guest memory (default: enough for the backing files, which live in
#                    the guest's RAM: about 10G for the defaults)
#   --smp N          guest vCPUs (default 2)
#   --bin PATH       rewind binary (default: $CARGO_TARGET_DIR/release/rewind if
#                    CARGO_TARGET_DIR is set, else target/release/rewind)
#   --rublk PATH     rublk binary (default: ci/work/rublk/bin/rublk, built by the setup)
#   --out DIR        where the results go (default: ci/work)
#   --no-setup       do not run ci/setup.sh --bench (packages, kernels, rublk) first
#   --estimate       print the plan and how long it would take, and stop
#   -h, --help       this text
#
# Examples:
#   ci/bench.sh                                  # the full run on 6.18: about 35 minutes
#   ci/bench.sh --kernel both                    # 6.12 and 6.18, one after the other
#   ci/bench.sh --runtime 2 --reps 1 --size-mib 256          # a smoke run: a few minutes
#   ci/bench.sh --targets rewind,rublk,loop --workloads randwrite,lat
# Only one qemu guest at a time on a shared machine: flock /work/qemu.lock ci/bench.sh ...
#
# The guest is qemu TCG (emulated CPUs): absolute figures say little; compare the ratios
# of one run, and the same ratios between runs.
set -euo pipefail

{
CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$CI_DIR/.." && pwd)

say() { printf 'bench.sh: %s\n' "$*"; }
die() {
    printf 'bench.sh: ERROR: %s\n' "$*" >&2
    exit 2
}
usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"; }

ALL_TARGETS=(rewind rewind-copy rewind-stop rublk rublk-zc rublk-q loop thin thin-snap dm-snap)
ALL_WORKLOADS=(randwrite randread fsync32 seqwrite seqread randrw lat)

KERNEL=6.18
RUNTIME=8
RAMP=2
REPS=3
WARMUP=3
SIZE_MIB=512
TARGETS=$(IFS=,; echo "${ALL_TARGETS[*]}")
WORKLOADS=$(IFS=,; echo "${ALL_WORKLOADS[*]}")
MEM=""
SMP=2
if [[ -n ${CARGO_TARGET_DIR:-} ]]; then BIN=$CARGO_TARGET_DIR/release/rewind; else BIN=$REPO/target/release/rewind; fi
RUBLK=$CI_DIR/work/rublk/bin/rublk
OUT=$CI_DIR/work
SETUP=1
ESTIMATE_ONLY=0
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
    case $1 in
    --kernel) need_arg "$@"; KERNEL=$2; shift 2 ;;
    --runtime) need_arg "$@"; RUNTIME=$2; shift 2 ;;
    --ramp) need_arg "$@"; RAMP=$2; shift 2 ;;
    --reps) need_arg "$@"; REPS=$2; shift 2 ;;
    --warmup) need_arg "$@"; WARMUP=$2; shift 2 ;;
    --size-mib) need_arg "$@"; SIZE_MIB=$2; shift 2 ;;
    --targets) need_arg "$@"; TARGETS=$2; shift 2 ;;
    --workloads) need_arg "$@"; WORKLOADS=$2; shift 2 ;;
    --mem) need_arg "$@"; MEM=$2; shift 2 ;;
    --smp) need_arg "$@"; SMP=$2; shift 2 ;;
    --bin) need_arg "$@"; BIN=$2; shift 2 ;;
    --rublk) need_arg "$@"; RUBLK=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --no-setup) SETUP=0; shift ;;
    --estimate) ESTIMATE_ONLY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see ci/bench.sh --help)" ;;
    esac
done

case $KERNEL in
6.12 | 6.18) KERNELS=("$KERNEL") ;;
both) KERNELS=(6.12 6.18) ;;
*) die "--kernel is 6.12, 6.18 or both, not '$KERNEL'" ;;
esac
for v in RUNTIME RAMP REPS WARMUP SIZE_MIB SMP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--$(tr 'A-Z_' 'a-z-' <<<"$v") wants a whole number, got '${!v}'"
done
[[ $RUNTIME -ge 1 ]] || die "--runtime must be at least 1"
[[ $REPS -ge 1 ]] || die "--reps must be at least 1"
[[ $SIZE_MIB -ge 64 ]] || die "--size-mib must be at least 64"
[[ $REPS -ge 3 ]] || say "NOTE: --reps $REPS: fewer than 3 repetitions give no meaningful median, min and max"

# check_list WHAT GIVEN KNOWN...: every comma-separated name of GIVEN is one of KNOWN.
check_list() {
    local what=$1 given=$2 x
    shift 2
    [[ -n ${given//,/} ]] || die "--$what is empty"
    for x in ${given//,/ }; do
        [[ " $* " == *" $x "* ]] || die "unknown $what entry '$x' (known: $*)"
    done
}
check_list targets "$TARGETS" "${ALL_TARGETS[@]}"
check_list workloads "$WORKLOADS" "${ALL_WORKLOADS[@]}"
read -r -a T_LIST <<<"${TARGETS//,/ }"
read -r -a W_LIST <<<"${WORKLOADS//,/ }"
has_target() { [[ " ${T_LIST[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------------ estimate
# Calibrated on this project's machines (qemu TCG, 2 vCPUs; a smoke run took 5.3 s per
# run of 2 + 2 s, and 359 s in all against 414 s estimated): a run takes its ramp and
# runtime plus about 1.5 s (fio's start, the figures read before and after, thin-snap's and
# dm-snap's snapshot work); a target's setup and prefill 3 s plus 1 s per 100 MiB; the
# boot and initramfs about 30 s. In tenths of a second.
RUN_OVERHEAD_DS=15
# targets_on SERIES: how many of the targets run on that kernel (rublk-zc and rewind-copy
# need 6.16 to differ from rublk and rewind; rublk-q runs only with more than 1 queue, that
# is 8 vCPUs or more).
targets_on() {
    local n=${#T_LIST[@]}
    if has_target rublk-zc && [[ $1 == 6.12 ]]; then n=$((n - 1)); fi
    if has_target rewind-copy && [[ $1 == 6.12 ]]; then n=$((n - 1)); fi
    if has_target rublk-q && [[ $SMP -lt 8 ]]; then n=$((n - 1)); fi
    echo "$n"
}
estimate() {
    local n w=${#W_LIST[@]}
    n=$(targets_on "$1")
    local ds=300
    ds=$((ds + n * (30 + SIZE_MIB / 10)))
    if [[ $WARMUP -gt 0 ]]; then ds=$((ds + n * (WARMUP * 10 + RUN_OVERHEAD_DS))); fi
    ds=$((ds + REPS * w * n * ((RAMP + RUNTIME) * 10 + RUN_OVERHEAD_DS)))
    echo $(((ds + 9) / 10))
}

# Guest memory: the backing files live on the guest's tmpfs (75% of its RAM), so it must
# hold them all, as ci/scenarios/bench.sh counts them, plus room for the rest.
if [[ -z $MEM ]]; then
    need=0
    for t in "${T_LIST[@]}"; do
        case $t in
        rewind | rewind-copy | rewind-stop) need=$((need + SIZE_MIB + (SIZE_MIB / 4 > 64 ? SIZE_MIB / 4 : 64) + SIZE_MIB / 50)) ;;
        thin) need=$((need + SIZE_MIB + 96)) ;;
        thin-snap) need=$((need + 3 * SIZE_MIB + 96)) ;;
        dm-snap) need=$((need + 2 * SIZE_MIB + SIZE_MIB / 128 + 4)) ;;
        *) need=$((need + SIZE_MIB)) ;;
        esac
    done
    mem_mib=$((need * 4 / 3 + 1536))
    mem_gib=$(((mem_mib + 1023) / 1024))
    [[ $mem_gib -ge 4 ]] || mem_gib=4
    MEM=${mem_gib}G
fi

total=0
for k in "${KERNELS[@]}"; do
    e=$(estimate "$k")
    total=$((total + e))
    runs=$((REPS * ${#W_LIST[@]} * $(targets_on "$k")))
    say "kernel $k: $(targets_on "$k") targets x ${#W_LIST[@]} workloads x $REPS reps = $runs runs of ${RAMP}+${RUNTIME} s; estimated $((e / 60)) min $((e % 60)) s"
done
say "plan: targets ${T_LIST[*]}; workloads ${W_LIST[*]}; ${SIZE_MIB} MiB devices; guest ${MEM}, ${SMP} vCPUs"
say "ESTIMATED TOTAL: about $((total / 60)) min $((total % 60)) s (plus setup: building rublk once takes a few minutes)"
if [[ $ESTIMATE_ONLY -eq 1 ]]; then exit 0; fi

# ------------------------------------------------------------------ setup
if [[ $SETUP -eq 1 ]]; then
    say "setup: ci/setup.sh --bench (apt packages, guest kernels, rublk; idempotent)"
    "$CI_DIR/setup.sh" --bench || die "ci/setup.sh --bench failed (see above)"
fi
[[ -x $BIN ]] || die "no rewind binary at $BIN: build it (cargo build --release) or pass --bin PATH"
python3 -c 'import json, statistics' 2>/dev/null || die "python3 is needed for the report (ci/setup.sh --bench installs it)"
WITH=()
if has_target rublk || has_target rublk-zc || has_target rublk-q; then
    [[ -x $RUBLK ]] || die "no rublk binary at $RUBLK: run ci/setup.sh --bench (or drop --no-setup), or pass --rublk PATH"
    WITH+=(--with "rublk=$RUBLK")
fi
if has_target thin || has_target thin-snap || has_target dm-snap; then
    dmsetup=$(PATH=/usr/sbin:/sbin:$PATH command -v dmsetup) ||
        die "dmsetup not found (apt install dmsetup; ci/setup.sh --bench does)"
    WITH+=(--with "dmsetup=$dmsetup")
fi
mkdir -p "$OUT"

# ------------------------------------------------------------------ runs
rc=0
reports=()
for k in "${KERNELS[@]}"; do
    e=$(estimate "$k")
    stem=$OUT/bench-$k-$(date +%Y%m%d-%H%M%S)
    say "kernel $k: starting at $(date +%H:%M:%S), estimated end about $(date -d "+$e seconds" +%H:%M:%S); console in $stem.log"
    t0=$SECONDS
    grc=0
    "$CI_DIR/guest.sh" --kernel "$k" --bin "$BIN" --mem "$MEM" --smp "$SMP" \
        --timeout $((e * 2 + 600)) "${WITH[@]}" \
        --env "BENCH_TARGETS=${T_LIST[*]}" --env "BENCH_WORKLOADS=${W_LIST[*]}" \
        --env "BENCH_SIZE_MIB=$SIZE_MIB" --env "BENCH_RUNTIME=$RUNTIME" --env "BENCH_RAMP=$RAMP" \
        --env "BENCH_REPS=$REPS" --env "BENCH_WARMUP=$WARMUP" \
        bench 2>&1 | tee "$stem.log" || grc=${PIPESTATUS[0]}
    say "kernel $k: guest took $((SECONDS - t0)) s (estimated $e s)"
    [[ $grc -eq 0 ]] || { say "kernel $k: the guest run failed (rc=$grc): the report below has what was measured"; rc=1; }
    if python3 "$CI_DIR/bench-report.py" "$stem.log" --json "$stem.json" --md "$stem.md" --png "$stem.png" >"$stem.report" 2>&1; then
        reports+=("$stem")
    else
        cat "$stem.report"
        say "kernel $k: no report (see $stem.log)"
        rc=1
    fi
done

for stem in "${reports[@]}"; do
    echo
    cat "$stem.report"
    rm -f "$stem.report"
    say "results: $stem.md, $stem.json$([[ -f $stem.png ]] && echo ", $stem.png"), console $stem.log"
done
exit "$rc"
}
