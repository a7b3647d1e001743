#!/bin/bash
# bench: 4 KiB random read and random write IOPS at QD32 of rewind, against the kernel
# loop device as the baseline, both over an image file on /tmp, in one boot.
# Not a pass/fail test (it fails only if something breaks); run it with ci/bench.sh.
#
# TCG emulation is noisy: compare the ratio rewind/loop of one run, not absolute numbers
# across runs. Each test runs BENCH_REPS times per device; the table shows medians.
#
# Environment (ci/bench.sh passes them with --env):
#   BENCH_TARGETS   devices to measure, in order (default "loop rewind"); rewind-copy is
#                   rewind with --data-path copy (the same as rewind on kernels before 6.16)
#   BENCH_SIZE_MIB  device and image size (default 1024)
#   BENCH_RUNTIME   measured seconds per run (default 20), after BENCH_RAMP (default 5)
#   BENCH_REPS      repetitions per test and device (default 3)
#   BENCH_ORDER     sequential (default: every run on loop, then every run on rewind) or
#                   interleaved (both devices up at once, runs alternating loop/rewind;
#                   needs room on /tmp for both images)
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

TARGETS=${BENCH_TARGETS:-loop rewind}
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
RUNTIME=${BENCH_RUNTIME:-20}
RAMP=${BENCH_RAMP:-5}
REPS=${BENCH_REPS:-3}
ORDER=${BENCH_ORDER:-sequential}
TESTS=(randread randwrite)
size=$((SIZE_MIB << 20))
results=$WORKDIR/results

pick_fio_engine
case $ORDER in sequential | interleaved) ;; *) die "BENCH_ORDER is sequential or interleaved, not '$ORDER'" ;; esac
say "targets: $TARGETS ($ORDER); ${SIZE_MIB} MiB; ${RUNTIME}s runs after ${RAMP}s ramp; $REPS reps; engine $FIO_ENGINE"
: >"$results"

declare -A DEVS IMGS

# setup_target NAME: create its image and device, prefill it sequentially (so that reads
# hit written data, not holes). Sets DEVS[NAME] and IMGS[NAME].
setup_target() {
    local name=$1 img=$WORKDIR/$1.img dev=""
    case $name in
    loop)
        truncate -s "$size" "$img"
        # With direct I/O the loop device does not keep a second copy of the data in the
        # guest's page cache: the fairer baseline. Whether the kernel allows it over tmpfs
        # varies: say which one we got.
        if dev=$(loop_attach "$img" --direct-io=on 2>/dev/null) &&
            [[ $(cat "/sys/block/${dev#/dev/}/loop/dio" 2>/dev/null) == 1 ]]; then
            say "[loop] $dev over $img with direct I/O ON"
        else
            [[ -z $dev ]] || loop_detach "$dev"
            dev=$(loop_attach "$img")
            say "[loop] $dev over $img with direct I/O OFF (--direct-io=on not possible here)"
        fi
        ;;
    rewind)
        dev=$(add_dev "$img" --size "${SIZE_MIB}M")
        say "[rewind] $dev over $img"
        ;;
    rewind-copy)
        dev=$(add_dev "$img" --size "${SIZE_MIB}M" --data-path copy)
        say "[rewind-copy] $dev over $img"
        ;;
    *)
        die "unknown bench target '$name' (known: loop rewind rewind-copy)"
        ;;
    esac
    DEVS[$name]=$dev
    IMGS[$name]=$img
    say "[$name] prefill $dev: sequential 1 MiB writes over all ${SIZE_MIB} MiB"
    run_fio --name=prefill --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 \
        --iodepth=8 --rw=write --bs=1M
    fio_expect write "$size"
}

teardown_target() {
    local name=$1
    case $name in
    loop) loop_detach "${DEVS[$name]}" ;;
    rewind | rewind-copy) del_dev "${DEVS[$name]}" ;;
    esac
    rm -f "${IMGS[$name]}"
}

# measure NAME TEST REP: one timed run, appended to $results as "NAME TEST REP IOPS".
measure() {
    local name=$1 t=$2 rep=$3 iops
    run_fio --name="$name-$t" --filename="${DEVS[$name]}" --ioengine="$FIO_ENGINE" \
        --direct=1 --iodepth=32 --rw="$t" --bs=4k --norandommap --randrepeat=0 \
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --group_reporting
    if [[ $t == randread ]]; then iops=$FIO_READ_IOPS; else iops=$FIO_WRITE_IOPS; fi
    say "[$name] $t rep $rep: $iops IOPS"
    echo "$name $t $rep $iops" >>"$results"
}

if [[ $ORDER == interleaved ]]; then
    # Both devices up at once, runs alternating: slow drifts of the emulation speed (the
    # host is busy with other work) then hit both sides alike.
    for target in $TARGETS; do setup_target "$target"; done
    for ((rep = 1; rep <= REPS; rep++)); do
        for t in "${TESTS[@]}"; do
            for target in $TARGETS; do measure "$target" "$t" "$rep"; done
        done
    done
    for target in $TARGETS; do teardown_target "$target"; done
else
    for target in $TARGETS; do
        setup_target "$target"
        for ((rep = 1; rep <= REPS; rep++)); do
            for t in "${TESTS[@]}"; do measure "$target" "$t" "$rep"; done
        done
        teardown_target "$target"
    done
fi

# median NAME TEST: the median IOPS of that device and test, or "-" if not measured.
median() {
    awk -v n="$1" -v t="$2" '$1 == n && $2 == t {print $4}' "$results" | sort -n |
        awk '{v[NR] = $1} END {
            if (NR == 0) print "-";
            else if (NR % 2) print v[(NR + 1) / 2];
            else printf "%d\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

say "all runs (IOPS):"
awk '{printf "    %-11s %-10s rep %s: %s\n", $1, $2, $3, $4}' "$results"
for target in $TARGETS; do
    for t in "${TESTS[@]}"; do echo "BENCH target=$target test=$t median_iops=$(median "$target" "$t")"; done
done
echo
printf '%-10s %16s %18s %14s\n' test "loop IOPS (med)" "rewind IOPS (med)" "rewind/loop"
for t in "${TESTS[@]}"; do
    l=$(median loop "$t")
    r=$(median rewind "$t")
    ratio=-
    if [[ $l != - && $r != - && $l -gt 0 ]]; then
        ratio=$(awk -v a="$r" -v b="$l" 'BEGIN {printf "%.2f", a / b}')
    fi
    printf '%-10s %16s %18s %14s\n' "$t" "$l" "$r" "$ratio"
    # One grep-able line per test for scripts that collect results.
    echo "BENCH test=$t loop_iops=$l rewind_iops=$r ratio=$ratio"
done
# Ratios of the runs of the same repetition: with BENCH_ORDER=interleaved these ran back
# to back, so their median shrugs off the emulation's drifts better than the ratio of
# medians above.
echo
for t in "${TESTS[@]}"; do
    awk -v t="$t" '$2 == t {iops[$1, $3] = $4; if ($3 > n) n = $3}
        END {
            for (i = 1; i <= n; i++)
                if (iops["loop", i] > 0 && iops["rewind", i] != "") r[++m] = iops["rewind", i] / iops["loop", i]
            if (m == 0) exit
            line = ""
            for (i = 1; i <= m; i++) line = line sprintf(" %.2f", r[i])
            # insertion sort for the median
            for (i = 2; i <= m; i++) { v = r[i]; for (j = i - 1; j >= 1 && r[j] > v; j--) r[j + 1] = r[j]; r[j + 1] = v }
            med = (m % 2) ? r[(m + 1) / 2] : (r[m / 2] + r[m / 2 + 1]) / 2
            printf "%-10s rewind/loop per repetition:%s; median %.2f\n", t, line, med
        }' "$results"
done
