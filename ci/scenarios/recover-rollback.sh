#!/bin/bash
# recover-rollback: the daemon killed with `kill -9` in the middle of a live rollback, and
# during heavy reclaim (writes of several times the history area under fio verification);
# after each, `rewind recover` brings the device back: after a rollback the device holds
# either the state before or the state rolled back to, never a mix; under reclaim fio sees
# no error and its verification passes; at the end `rewind check` finds the image clean.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

ROUNDS=${RECOVER_ROLLBACK_ROUNDS:-5}
img=$WORKDIR/disk.img
dev=$(add_dev "$img" --size 128M --history 64M)
id=${dev#/dev/ublkb}
data_mib=8

devsum() { dd if="$dev" bs=1M count="$data_mib" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; }

for ((r = 1; r <= ROUNDS; r++)); do
    head -c $((data_mib << 20)) /dev/urandom >"$STATE/a"
    head -c $((data_mib << 20)) /dev/urandom >"$STATE/b"
    a=$(sha256sum <"$STATE/a" | cut -d' ' -f1)
    b=$(sha256sum <"$STATE/b" | cut -d' ' -f1)
    dd if="$STATE/a" of="$dev" bs=1M oflag=direct conv=fsync 2>/dev/null
    rewind safepoint -n "$id" --label "a$r" >/dev/null
    dd if="$STATE/b" of="$dev" bs=1M oflag=direct conv=fsync 2>/dev/null
    [[ $(devsum) == "$b" ]] || die "round $r: the device does not hold what was written"
    # Its failure (the daemon killed under it) is expected: no ERR trap for it.
    { "$REWIND" rollback -n "$id" --to "a$r" >"$STATE/rb.out" 2>&1 || true; } &
    rb=$!
    # From at once to a second later, across the rounds: before, during and after the
    # daemon's part of the rollback.
    delay_us=$(((r - 1) * 1000000 / ROUNDS + RANDOM % 50000))
    usleep "$delay_us"
    pid=$(daemon_pid "$id")
    kill -9 "$pid"
    wait_exited "$pid"
    wait "$rb" || true
    rewind recover -n "$id" >/dev/null || die "round $r: rewind recover failed"
    got=$(devsum)
    if [[ $got == "$a" ]]; then
        state="rolled back"
    elif [[ $got == "$b" ]]; then
        state="not rolled back"
    else
        die "round $r: after the kill the device holds neither state (a mix?)"
    fi
    say "round $r/$ROUNDS: killed $((delay_us / 1000)) ms into the rollback: recovered, $state ($(tr '\n' ' ' <"$STATE/rb.out" | cut -c1-160))"
done

say "kill -9 during heavy reclaim"
pick_fio_engine
job=(--name=reclaim --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16
    --rw=randwrite --bs=4k --size=128M --loops=3 --verify=crc32c --group_reporting)
fio --eta=never --output-format=normal,terse "${job[@]}" >"$STATE/fio.out" 2>&1 &
fpid=$!
for _ in 1 2; do
    sleep 6
    alive "$fpid" || break
    stats=$(rewind stats -n "$id" | grep -E '^(history|safe points)' | tr -s ' ' | tr '\n' ';')
    pid=$(daemon_pid "$id")
    kill -9 "$pid"
    wait_exited "$pid"
    rewind recover -n "$id" >/dev/null || die "recover during reclaim failed"
    say "killed during reclaim ($stats) and recovered"
done
rc=0
wait "$fpid" || rc=$?
check_fio "$STATE/fio.out" "$rc" >/dev/null
say "fio wrote $((FIO_WRITE_KIB >> 10)) MiB (history area 64 MiB) and verified it with no error"
no_kernel_io_errors
del_dev "$dev"
"$REWIND" check "$img" || die "rewind check found problems"
say "kills during rollback and reclaim: recovered every time, image clean"
