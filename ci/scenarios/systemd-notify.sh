#!/bin/bash
# systemd-notify: the daemon under systemd's notify protocol, as rewind@.service runs it
# (Type=notify, WatchdogSec), with a listener standing in for systemd (the guest has none).
#
# `rewind add IMAGE --foreground` with NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, as
# systemd starts ExecStart: READY=1 with its MAINPID and "serving /dev/ublkbN" once the
# device is live; WATCHDOG=1 at half the interval; no ping while the daemon is stopped
# (SIGSTOP: hung, which systemd would see); after kill -9, the same command (systemd's
# Restart=on-failure) recovers the waiting device, its data intact; `rewind del` ends the
# unit's process with 0 and STOPPING=1, and so does SIGTERM (`systemctl stop`). The
# listener's trace is printed at the end.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

command -v notify-listen >/dev/null ||
    die "needs notify-listen in the guest: ci/guest.sh --with notify-listen=target/release/examples/notify_listen"
img=$WORKDIR/disk.img
sock=$WORKDIR/notify.sock
notes=$WORKDIR/notes
rewind create "$img" --size 64M >/dev/null
# exec: $! must be the listener's own pid (with traps set, bash runs a background command
# under a subshell).
(exec notify-listen "$sock" >"$notes") &
listener=$!
start=$SECONDS
until [[ -S $sock ]]; do
    [[ $((SECONDS - start)) -lt 30 ]] || die "notify-listen made no socket in 30s"
    sleep 0.1
done

# start_unit: what systemd does for ExecStart, with WatchdogSec=2. The pid after exec is
# the subshell's, which is the daemon's: WATCHDOG_PID names it, as systemd does.
start_unit() {
    (exec env NOTIFY_SOCKET="$sock" WATCHDOG_USEC=2000000 WATCHDOG_PID="$BASHPID" \
        "$REWIND" add "$img" --foreground >>"$WORKDIR/out" 2>>"$WORKDIR/err") &
    unit=$!
}
count() { grep -c -- "$1" "$notes" || true; }
# wait_count FIELD N: until the listener got FIELD N times.
wait_count() {
    local start=$SECONDS
    until [[ $(count "$1") -ge $2 ]]; do
        [[ $((SECONDS - start)) -lt 90 ]] || die "no $1 (#$2) within 90s; got: $(cat "$notes")"
        alive "$unit" || die "the unit's process died before $1 (#$2): $(tail -5 "$WORKDIR/err")"
        sleep 0.2
    done
}

say "start: READY=1 once the device is live"
start_unit
wait_count "READY=1" 1
grep -q "MAINPID=$unit\$" "$notes" || die "MAINPID is not the daemon's pid $unit: $(cat "$notes")"
dev=$(sed -n 's/.*STATUS=serving //p' "$notes" | head -1)
[[ -b $dev ]] || die "STATUS names no block device: '$dev'"
id=${dev#/dev/ublkb}
echo "$id" >>"$STATE/ublk"
dd if=/dev/urandom of="$WORKDIR/data" bs=1M count=8 2>/dev/null
dd if="$WORKDIR/data" of="$dev" bs=1M oflag=direct conv=fsync 2>/dev/null

say "watchdog: a ping every second while the engine answers"
wait_count "WATCHDOG=1" 3

say "hung (SIGSTOP): no ping"
kill -STOP "$unit"
# A ping sent just before the stop may reach the listener's output a moment later.
sleep 0.5
before=$(count "WATCHDOG=1")
sleep 3
after=$(count "WATCHDOG=1")
[[ $after -eq $before ]] || die "$((after - before)) pings while the daemon was stopped"
kill -CONT "$unit"
wait_count "WATCHDOG=1" $((after + 1))

say "killed (kill -9): the restarted unit recovers the device"
kill -9 "$unit"
wait "$unit" || true
start_unit
wait_count "READY=1" 2
grep -q "recovering it" "$WORKDIR/err" || die "the restart did not recover: $(tail -5 "$WORKDIR/err")"
cmp <(dd if="$dev" bs=1M count=8 iflag=direct 2>/dev/null) "$WORKDIR/data" ||
    die "the data differs after the recovery"

say "rewind del: the unit's process ends with 0 and STOPPING=1"
stops=$(count "STOPPING=1")
rewind del -n "$id" || die "rewind del failed"
rc=0
wait "$unit" || rc=$?
[[ $rc -eq 0 ]] || die "the unit's process ended with $rc after rewind del"
[[ $(count "STOPPING=1") -gt $stops ]] || die "no STOPPING=1 after rewind del"

say "SIGTERM (systemctl stop): the same"
start_unit
wait_count "READY=1" 3
dev=$(sed -n 's/.*STATUS=serving //p' "$notes" | tail -1)
echo "${dev#/dev/ublkb}" >"$STATE/ublk"
kill -TERM "$unit"
rc=0
wait "$unit" || rc=$?
[[ $rc -eq 0 ]] || die "the unit's process ended with $rc after SIGTERM"
[[ ! -b $dev ]] || die "$dev is still there after SIGTERM"
: >"$STATE/ublk"
kill "$listener"
say "the notify trace (seconds, field):"
cat "$notes"
say "readiness, watchdog, recovery by restart and both stops as systemd expects them"
