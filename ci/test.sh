#!/bin/bash
# The project's test command (`ci/test.sh` as root, or `sudo ci/test.sh`; CI runs it through .ci/run):
#   setup (apt packages, the two guest kernels) -> cargo fmt --check -> cargo clippy -D
#   warnings -> cargo test (debug) -> fuzzing (ci/fuzz.sh: 20 s per target; a longer run is
#   `ci/fuzz.sh --seconds 600`) -> cargo build --release -> every end-to-end scenario in a
#   guest on the 6.12 kernel (step guest-6.12), then all again in a guest on the 6.18 LTS
#   kernel (step guest-6.18): two boots, one after the other.
# Every step runs even if an earlier one failed, except the end-to-end scenarios, which
# need the release build; the exit status is non-zero if any step failed (a scenario
# skipped on a kernel that lacks what it needs is not a failure). Needs no terminal: every
# step reads /dev/null.
#
# Started through sudo, cargo runs as the invoking user (with their toolchain, and
# target/ stays theirs); only setup needs root.
set -euo pipefail

# All of it is one { ... } block: bash reads the block whole before running it, so editing
# this file while a run is under way (CI, a colleague) cannot derail that run.
{
CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$CI_DIR/.." && pwd)
cd "$REPO"

SCENARIOS=(fio-verify ext4-files mixed-bs discard bad-input safepoints rollback-offline rollback-live
    recover-fio recover-ext4 recover-del recover-rollback recover-supervise upgrade
    view-fio view-ext4 diff bisect archive mirror pool pool-foundation systemd-notify history-full host-full on-crash-stop zero-copy scale demo)
# The guest kernels (ci/setup.sh fetches both): all the scenarios run on each, one boot
# each, a step each.
KERNELS=(6.12 6.18)

CARGO=(cargo)
if [[ $(id -u) -eq 0 && -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
    user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    CARGO=(sudo -u "$SUDO_USER" -H env "PATH=$user_home/.cargo/bin:$PATH" cargo)
else
    # sudo's secure_path, or a CI shell without a login profile, may hide rustup's cargo.
    for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
        if ! command -v cargo >/dev/null && [[ -x $d/cargo ]]; then PATH=$d:$PATH; fi
    done
fi
RELEASE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/rewind"

names=()
verdicts=()
times=()
failed=0
total_start=$SECONDS

# step NAME COMMAND...: run one step, time it, record its verdict.
step() {
    local name=$1 rc=0 start=$SECONDS
    shift
    echo
    echo "==> [$name] $*"
    "$@" </dev/null || rc=$?
    names+=("$name")
    times+=("$((SECONDS - start))s")
    if [[ $rc -eq 0 ]]; then
        verdicts+=(ok)
        echo "<== [$name] ok in $((SECONDS - start))s"
    else
        verdicts+=("FAILED (rc=$rc)")
        failed=$((failed + 1))
        echo "<== [$name] FAILED (rc=$rc) after $((SECONDS - start))s"
    fi
    return "$rc"
}

skip() {
    names+=("$1")
    times+=(-)
    verdicts+=("skipped: $2")
    failed=$((failed + 1))
    echo
    echo "==> [$1] skipped: $2"
}

# Without root, setup succeeds if nothing needs installing, and otherwise says what is missing.
step setup "$CI_DIR/setup.sh" || true
step fmt "${CARGO[@]}" fmt --all -- --check || true
step clippy "${CARGO[@]}" clippy --workspace --all-targets -- -D warnings || true
step test "${CARGO[@]}" test --workspace || true
step fuzz "$CI_DIR/fuzz.sh" || true
if step build-release "${CARGO[@]}" build --release --bins --example notify_listen; then
    for k in "${KERNELS[@]}"; do
        step "guest-$k" "$CI_DIR/guest.sh" --kernel "$k" --bin "$RELEASE_BIN" \
            --with notify-listen="${RELEASE_BIN%/*}/examples/notify_listen" \
            --with qemu-nbd="$(command -v qemu-nbd || echo /usr/bin/qemu-nbd)" \
            "${SCENARIOS[@]}" || true
    done
else
    for k in "${KERNELS[@]}"; do
        skip "guest-$k" "needs the release build"
    done
fi

echo
echo "==================== ci/test.sh summary ===================="
for i in "${!names[@]}"; do
    printf '  %-14s %7s  %s\n' "${names[$i]}" "${times[$i]}" "${verdicts[$i]}"
done
printf '  %-14s %7s\n' total "$((SECONDS - total_start))s"
if [[ $failed -ne 0 ]]; then
    echo "ci/test.sh: $failed step(s) failed"
    exit 1
fi
echo "ci/test.sh: all steps passed"
}
exit
