#!/bin/bash
# fio-verify: what is written through rewind reads back bit for bit, from the live daemon
# and after the daemon is stopped and the image served again.
#
# fio writes every 4 KiB block of the device exactly once, in random order, each block
# carrying a header with its offset and a crc32c of its contents. Verification passes use
# --verify_only: fio replays the same (seeded) sequence of offsets without writing and
# reads every block back. Note that --verify_only needs do_verify=1 (the default): with
# do_verify=0 it silently reads nothing, hence the fio_expect checks on the bytes read.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

SIZE_MIB=${FIO_VERIFY_SIZE_MIB:-512}
size=$((SIZE_MIB << 20))
img=$WORKDIR/disk.img

pick_fio_engine
say "creating a ${SIZE_MIB} MiB device on $img"
dev=$(add_dev "$img" --size "${SIZE_MIB}M")
got=$(blockdev --getsize64 "$dev")
[[ $got -eq $size ]] || die "$dev has $got bytes, expected --size ${SIZE_MIB}M = $size"

say "rewind list / rewind list --json must work while a device is up"
rewind list || die "rewind list failed"
rewind list --json || die "rewind list --json failed"

job=(--name=fio-verify --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=32
    --rw=randwrite --bs=4k --verify=crc32c --randrepeat=1 --group_reporting)

say "write pass: every 4 KiB block once, random order, QD32"
run_fio "${job[@]}" --do_verify=0
fio_expect write "$size"

say "verify pass on the same daemon"
run_fio "${job[@]}" --verify_only
fio_expect read "$size"

say "stopping the device and serving the image again"
del_dev "$dev"
[[ -f $img ]] || die "$img is gone after rewind del"
dev=$(add_dev "$img")
got=$(blockdev --getsize64 "$dev")
[[ $got -eq $size ]] || die "re-served $dev has $got bytes, expected $size"

say "verify pass after the restart"
run_fio "${job[@]}" --verify_only
fio_expect read "$size"

del_dev "$dev"
say "all $((size / 4096)) blocks verified before and after a restart"
