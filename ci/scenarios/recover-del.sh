#!/bin/bash
# recover-del: `rewind del` while fio runs tears the device down cleanly and does not hang,
# for a live device and for one whose daemon was killed (quiesced, I/O waiting); the image
# passes `rewind check` afterwards and serves again. A second `rewind add` of a served image
# is refused with the pid of the daemon that owns it.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
pick_fio_engine
job=(--name=del --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16 --rw=randrw --bs=4k
    --size=128M --time_based --runtime=120 --eta=never)

# fio_gone PID SECONDS: fio must end within SECONDS (with an error: its device went away).
fio_gone() {
    local pid=$1 limit=$2 start=$SECONDS
    while alive "$pid"; do
        [[ $((SECONDS - start)) -lt $limit ]] || die "fio still runs ${limit}s after rewind del"
        sleep 0.2
    done
    wait "$pid" || true
}

dev=$(add_dev "$img" --size 256M)
id=${dev#/dev/ublkb}
pid=$(daemon_pid "$id")
err=$("$REWIND" add "$img" 2>&1) && die "a second rewind add of $img succeeded"
say "second add refused: $err"
grep -Eq "in use by another rewind daemon \(pid $pid" <<<"$err" ||
    die "the refusal does not name the owner (pid $pid): $err"

say "rewind del while fio runs on the live device"
fio "${job[@]}" --filename="$dev" >"$STATE/fio1.out" 2>&1 &
fpid=$!
sleep 3
t0=$SECONDS
del_dev "$dev"
fio_gone "$fpid" 30
say "live device deleted under fio in $((SECONDS - t0))s"
"$REWIND" check "$img" || die "rewind check failed after deleting the live device"

say "rewind del of a device whose daemon was killed (quiesced), fio waiting on it"
dev=$(add_dev "$img")
id=${dev#/dev/ublkb}
fio "${job[@]}" --filename="$dev" >"$STATE/fio2.out" 2>&1 &
fpid=$!
sleep 3
pid=$(daemon_pid "$id")
kill -9 "$pid"
wait_exited "$pid"
sleep 1
list=$(rewind list)
echo "$list"
grep -q "needs \`rewind recover -n $id\`" <<<"$list" || die "rewind list does not say the device needs recovery"
# Not piped into grep -q: with pipefail, rewind killed by SIGPIPE would fail the test.
json=$(rewind list --json)
grep -q '"needs_recover": true' <<<"$json" || die "rewind list --json lacks needs_recover: $json"
t0=$SECONDS
del_dev "$dev"
fio_gone "$fpid" 30
say "quiesced device deleted under fio in $((SECONDS - t0))s"
[[ ! -e /run/rewind/ublkb$id.sock && ! -e /run/rewind/ublkb$id.pid ]] ||
    die "the dead daemon's socket or pid file is left behind"
"$REWIND" check "$img" || die "rewind check failed after deleting the quiesced device"

dev=$(add_dev "$img")
dd if="$dev" of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null || die "reading the re-added device failed"
del_dev "$dev"
say "del under fio: no hang, clean image, serves again"
