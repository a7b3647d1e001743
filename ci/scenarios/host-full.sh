#!/bin/bash
# host-full: a sparse image (`--sparse`) on a host file system that fills up. Writes to
# the device then fail with an I/O error, and the daemon says why: its log, `rewind list`
# and `rewind stats` (and --json) say "host filesystem full (ENOSPC)". The device is then
# deleted as usual.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

small=$WORKDIR/small
mkdir -p "$small"
# Room for the metadata and some data, not for the 64 MiB the device holds (the cleanup
# unmounts it).
mount -t tmpfs -o size=40m tmpfs "$small" || die "mounting a 40 MiB tmpfs on $small failed"
img=$small/host-full.img
dev=$(add_dev "$img" --size 64M --history 8M --sparse)
id=${dev#/dev/ublkb}
pick_fio_engine

say "writing 64 MiB to a device whose image has room for less"
rc=0
fio --name=fill --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=8 \
    --rw=write --bs=64k --size=64M --eta=never >"$STATE/fill.out" 2>&1 || rc=$?
tail -n 5 "$STATE/fill.out"
[[ $rc -ne 0 ]] || die "fio wrote 64 MiB to a device whose image has room for less"

list=$(rewind list)
echo "$list"
grep -q "host filesystem full (ENOSPC)" <<<"$list" || die "rewind list does not say the host is full"
grep -q "sparse image" <<<"$list" || die "rewind list does not say the image is sparse"
stats=$(rewind stats -n "$id")
echo "$stats"
grep -q "^warning .*host filesystem full (ENOSPC)" <<<"$stats" ||
    die "rewind stats does not warn that the host is full"
json=$(rewind stats -n "$id" --json)
grep -Eq '"host_full_errors": [1-9]' <<<"$json" || die "rewind stats --json: no host_full_errors: $json"
grep -q "host filesystem full (ENOSPC)" "$REWIND_LOG_DIR/rewind-host-full.img.log" ||
    die "the daemon's log does not say the host is full"

del_dev "$dev"
say "a full host file system is reported by the log, list and stats"
