#!/bin/bash
# Benchmark rewind against the kernel loop device: 4 KiB random read and write at QD32,
# in one guest boot (see ci/scenarios/bench.sh). Prints a table of median IOPS and the
# ratio rewind/loop; compare ratios, not absolute numbers, between runs.
#
# usage: ci/bench.sh [--loop-only] [--interleave] [--runtime S] [--reps N] [--size-mib N]
#                    [guest.sh options]
# --interleave alternates loop and rewind runs with both devices up, instead of all loop
# runs first: steadier ratios when the host's load varies during the run.
set -euo pipefail

CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

targets="loop rewind"
envs=()
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --loop-only) targets=loop; shift ;;
    --interleave) envs+=(--env BENCH_ORDER=interleaved); shift ;;
    --runtime) envs+=(--env "BENCH_RUNTIME=${2:?}"); shift 2 ;;
    --reps) envs+=(--env "BENCH_REPS=${2:?}"); shift 2 ;;
    --size-mib) envs+=(--env "BENCH_SIZE_MIB=${2:?}"); shift 2 ;;
    -h | --help)
        awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) args+=("$1"); shift ;;
    esac
done

# Two devices x two tests x 3 reps x 25 s, plus prefills and the boot: about 6 minutes;
# the timeout leaves room for a slow machine. A later --timeout in the arguments wins.
exec "$CI_DIR/guest.sh" --timeout 3600 --env "BENCH_TARGETS=$targets" "${envs[@]}" "${args[@]}" bench
