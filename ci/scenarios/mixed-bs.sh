#!/bin/bash
# mixed-bs: writes of mixed sizes (4 KiB to 1 MiB) from two CPUs at once, with one queue
# and with two, read back intact from the live daemon and after a restart.
#
# Two fio jobs, each pinned to its own CPU so that with --queues 2 both hardware queues
# carry I/O, each writing its own half of the device with random offsets and block sizes
# from a bssplit, then verifying; then rewind del, rewind add and a verify-only pass.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

SIZE_MIB=${MIXED_SIZE_MIB:-512}
size=$((SIZE_MIB << 20))
half=$((size / 2))
ncpu=$(nproc)

pick_fio_engine
for q in 1 2; do
    img=$WORKDIR/disk-q$q.img
    say "=== --queues $q ==="
    dev=$(add_dev "$img" --size "${SIZE_MIB}M" --queues "$q")
    mq=/sys/block/${dev#/dev/}/mq
    [[ -d $mq ]] || die "$dev has no $mq: cannot count its hardware queues"
    nq=$(find "$mq" -mindepth 1 -maxdepth 1 -type d | wc -l)
    [[ $nq -eq $q ]] || die "$dev has $nq hardware queues, expected $q"

    job=(--name="mixed-q$q" --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=32
        --rw=randwrite --bssplit=4k/30:16k/20:64k/20:256k/15:1m/15 --verify=crc32c
        --randrepeat=1 --numjobs=2 --size="$half" --offset_increment="$half"
        --cpus_allowed="0-$((ncpu - 1))" --cpus_allowed_policy=split)

    say "write pass then verify, on the same daemon"
    run_fio "${job[@]}"
    fio_expect write "$size"
    fio_expect read "$size"

    say "stopping the device and serving the image again"
    del_dev "$dev"
    dev=$(add_dev "$img" --queues "$q")

    say "verify pass after the restart"
    run_fio "${job[@]}" --verify_only
    fio_expect read "$size"
    del_dev "$dev"
    rm -f "$img"
done
say "mixed block sizes verified with 1 and 2 queues"
