#!/bin/bash
# on-crash-stop: `--on-crash stop`. fio writes a region and flushes it (fsync), then writes a
# second region without a flush; the daemon is killed with SIGKILL. The device has no
# recovery: `rewind del` removes it, the image passes `rewind check`, and `rewind add` of it
# serves the flushed region intact. The unflushed writes completed without their journal
# records, as on a disk with a volatile write cache: the kill may lose them (the scenario
# says how much of them came back, which any prefix of them allows).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
pick_fio_engine
# --idle 0: no idle safe point commits the unflushed writes before the kill.
dev=$(add_dev "$img" --size 128M --on-crash stop --idle 0)
id=${dev#/dev/ublkb}
flushed=(--name=flushed --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16
    --rw=randwrite --bs=4k --size=32M --verify=crc32c --randseed=7)

say "32 MiB of random writes with verify headers, then an fsync (a FLUSH)"
run_fio "${flushed[@]}" --end_fsync=1
fio_expect write $((32 << 20))
say "32 MiB more at offset 64 MiB, with no flush"
run_fio --name=unflushed --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16 \
    --rw=write --bs=64k --offset=64M --size=32M --buffer_pattern=0x5a
fio_expect write $((32 << 20))

pid=$(daemon_pid "$id")
[[ -n $pid ]] || die "no daemon pid for $dev"
kill -9 "$pid"
start=$SECONDS
while alive "$pid"; do
    [[ $((SECONDS - start)) -lt 30 ]] || die "the killed daemon (pid $pid) is still there after 30s"
    sleep 0.1
done
say "killed the daemon (pid $pid)"
del_dev "$dev"
"$REWIND" check "$img" || die "rewind check failed after the kill"

dev=$(add_dev "$img")
say "the flushed region reads back intact"
run_fio "${flushed[@]}" --verify_only
fio_expect read $((32 << 20))
# The region held zeros before: its bytes that are not zero came back.
kept=$(dd if="$dev" bs=1M skip=64 count=32 iflag=direct 2>/dev/null | tr -d '\000' | wc -c)
say "of the 32 MiB written without a flush, $((kept >> 10)) KiB came back"
del_dev "$dev"
say "--on-crash stop: a kill loses no flushed write, and the image recovers from its journal"
