#!/bin/bash
# recover-supervise: `rewind add --supervise` keeps the device served with no error reaching
# fio: the daemon killed with `kill -9` is recovered by the supervisor, and a daemon frozen
# with SIGSTOP misses its heartbeats, is killed and recovered. `rewind del` stops the
# supervisor too.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
dev=$(add_dev "$img" --size 256M --supervise)
id=${dev#/dev/ublkb}
sup=$(cat "/run/rewind/ublkb$id.supervisor.pid")
alive "$sup" || die "no supervisor running (pid file says $sup)"
pick_fio_engine
job=(--name=sup --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16
    --rw=randwrite --bs=4k --size=32M --verify=crc32c --group_reporting)

# fio jobs one after another until told to stop; the first failure is kept.
fio_loop() {
    local n=0 rc
    while [[ ! -e $STATE/stop ]]; do
        n=$((n + 1))
        rc=0
        fio --eta=never --output-format=normal,terse "${job[@]}" --randseed="$n" >"$STATE/fio-$n.out" 2>&1 || rc=$?
        if [[ $rc -ne 0 ]] || grep -Eq "$FIO_ERRORS" "$STATE/fio-$n.out"; then
            echo "$n $rc" >"$STATE/fio.failed"
            return 1
        fi
        echo "$n" >"$STATE/fio.done"
    done
}
fio_loop &
floop=$!

# wait_new_daemon OLD SECONDS: until a daemon other than OLD serves the device.
wait_new_daemon() {
    local old=$1 limit=$2 t0=$SECONDS p
    while :; do
        p=$(daemon_pid "$id")
        if [[ -n $p && $p != "$old" ]] && alive "$p" &&
            grep -q "^$id .* live " <<<"$(rewind list)"; then
            echo "$p"
            return 0
        fi
        [[ $((SECONDS - t0)) -lt $limit ]] || die "no new daemon ${limit}s after the old one ($old) went"
        sleep 0.2
    done
}

sleep 3
pid=$(daemon_pid "$id")
t0=$(now_s)
kill -9 "$pid"
new=$(wait_new_daemon "$pid" 60)
say "kill -9 of pid $pid: the supervisor recovered the device (new daemon pid $new) in $(ms_between "$t0" "$(now_s)") ms"

sleep 3
pid=$new
t0=$(now_s)
kill -STOP "$pid"
new=$(wait_new_daemon "$pid" 90)
say "SIGSTOP of pid $pid: the heartbeat noticed, the supervisor killed it and recovered (new pid $new) in $(ms_between "$t0" "$(now_s)") ms"
! alive "$pid" || die "the frozen daemon $pid is still there"
log=$(ls "$REWIND_LOG_DIR"/rewind-disk.img.log)
grep -q "missed 3 heartbeats" "$log" || die "the supervisor's log does not say the heartbeat was missed"

sleep 3
touch "$STATE/stop"
wait "$floop" || die "fio failed: run $(cat "$STATE/fio.failed"): $(grep -Em 3 "$FIO_ERRORS|error" "$STATE/fio-$(cut -d' ' -f1 "$STATE/fio.failed").out" | tr '\n' ' ')"
say "$(cat "$STATE/fio.done") fio write+verify runs passed across both recoveries"
no_kernel_io_errors
del_dev "$dev"
! alive "$sup" || die "the supervisor (pid $sup) survived rewind del"
grep -E "supervisor|recovered|heartbeat" "$log" | tail -n 8
say "the supervisor recovered a killed and a frozen daemon; fio saw no error"
