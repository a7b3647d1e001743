#!/bin/bash
# Fuzzes everything rewind reads from disk: ci/fuzz.sh [--seconds N] [TARGET...]
#   superblock, journal, checkpoint, image, archive (fuzz/fuzz_targets/; inputs and checks
#   are in history/src/fuzzing.rs and archive/src/fuzzing.rs). Each runs N seconds (default
#   20) on a copy of its committed corpus (fuzz/corpus/TARGET), so CI never grows the
#   corpus. A longer run: ci/fuzz.sh --seconds 600.
# Builds with `cargo +nightly fuzz` (installs cargo-fuzz if missing; without a nightly,
# tries stable with RUSTC_BOOTSTRAP=1), with debug assertions and overflow checks on.
# Limits: 1024 MiB of memory (a larger allocation is a finding) and 10 s per input (a
# hang). Prints executions per target and a total; exits non-zero on a crash, timeout or
# out-of-memory (the input is kept in fuzz/artifacts/TARGET/, the log is printed), and
# with "fuzz: NOT RUN: reason" when fuzzing cannot run here.
#
# A finding: reproduce with `cargo +nightly fuzz run -a TARGET fuzz/artifacts/TARGET/FILE`,
# fix it in history/ or archive/ with an error, never a panic, and copy the input to
# fuzz/corpus/TARGET/regress-<what> so history/tests/fuzz_corpus.rs guards it on stable.
set -euo pipefail

{
CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$CI_DIR/.." && pwd)
cd "$REPO"

ALL_TARGETS=(superblock journal checkpoint image archive)
seconds=20
targets=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --seconds needs a positive number" >&2; exit 2; }
            seconds=$2
            shift 2
            ;;
        -h | --help)
            sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "fuzz.sh: unknown option $1" >&2
            exit 2
            ;;
        *)
            [[ " ${ALL_TARGETS[*]} " == *" $1 "* ]] || { echo "fuzz.sh: no target $1 (${ALL_TARGETS[*]})" >&2; exit 2; }
            targets+=("$1")
            shift
            ;;
    esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")

# As ci/test.sh: started through sudo, cargo (and every file it writes) belongs to the
# invoking user.
AS_USER=()
if [[ $(id -u) -eq 0 && -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
    user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    AS_USER=(sudo -u "$SUDO_USER" -H env "PATH=$user_home/.cargo/bin:$PATH")
else
    for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
        if ! command -v cargo >/dev/null && [[ -x $d/cargo ]]; then PATH=$d:$PATH; fi
    done
fi
CARGO=("${AS_USER[@]}" cargo)

not_run() {
    echo "fuzz: NOT RUN: $*"
    exit 3
}

"${CARGO[@]}" --version >/dev/null 2>&1 || not_run "no cargo"
if ! "${CARGO[@]}" fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    "${CARGO[@]}" install cargo-fuzz --locked </dev/null ||
        not_run "cargo-fuzz is missing and 'cargo install cargo-fuzz --locked' failed"
fi

# libFuzzer's instrumentation needs nightly flags.
if "${CARGO[@]}" +nightly --version >/dev/null 2>&1; then
    FUZZ=("${CARGO[@]}" +nightly fuzz)
    toolchain=nightly
else
    FUZZ=("${AS_USER[@]}" env RUSTC_BOOTSTRAP=1 cargo fuzz)
    toolchain="stable with RUSTC_BOOTSTRAP=1 (no nightly toolchain)"
fi
echo "fuzz: building the targets with $toolchain"
if ! "${FUZZ[@]}" build -a </dev/null; then
    if [[ $toolchain == nightly ]]; then
        echo "fuzz: the fuzz targets do not build"
        exit 1
    fi
    not_run "no nightly toolchain, and stable with RUSTC_BOOTSTRAP=1 cannot build the fuzz targets"
fi

work=$("${AS_USER[@]}" mktemp -d "${TMPDIR:-/tmp}/rewind-fuzz.XXXXXX")
total_execs=0
findings=0
printf 'fuzz: %d s per target, corpus copies in %s\n' "$seconds" "$work"
for t in "${targets[@]}"; do
    "${AS_USER[@]}" cp -r "fuzz/corpus/$t" "$work/$t"
    log=$work/$t.log
    rc=0
    # The outer timeout only guards against a hang outside libFuzzer's own limits.
    timeout "$((seconds + 300))" "${FUZZ[@]}" run -a "$t" "$work/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
        </dev/null >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs=${execs:-0}
    total_execs=$((total_execs + execs))
    if [[ $rc -eq 0 ]]; then
        printf 'fuzz: %-10s %5d s %10d executions  no finding\n' "$t" "$seconds" "$execs"
        continue
    fi
    findings=$((findings + 1))
    if grep -q 'ERROR: libFuzzer: timeout' "$log"; then
        kind=timeout
    elif grep -q 'out-of-memory\|malloc(.*) exceeds limit' "$log"; then
        kind=out-of-memory
    elif grep -q 'panicked at\|deadly signal\|ERROR: AddressSanitizer' "$log"; then
        kind=crash
    else
        kind="exit status $rc"
    fi
    printf 'fuzz: %-10s %5d s %10d executions  FINDING: %s\n' "$t" "$seconds" "$execs" "$kind"
    # What happened and where the input is; the log also holds the input's Debug dump.
    {
        grep -A1 'panicked at' "$log" | head -4
        grep -E 'ERROR: (libFuzzer|AddressSanitizer)|SUMMARY: libFuzzer|Test unit written' "$log" | head -6
    } | sed 's/^/    /'
    echo "    full log: $log"
done
printf 'fuzz: %-10s %5d s %10d executions  %s\n' total "$((seconds * ${#targets[@]}))" \
    "$total_execs" "$([[ $findings -eq 0 ]] && echo "no finding" || echo "$findings finding(s)")"
if [[ $findings -ne 0 ]]; then
    exit 1
fi
rm -rf "$work"
}
exit
