#!/bin/bash
# pool: one device over an image file, a second file and a block device (`rewind create
# --backing`), served through the kernel's ublk driver, with every block checked.
#
# The pool's image keeps the metadata; its data area continues on a file and then on a loop
# device. The data area (192 MiB of device and 128 MiB of history) starts on the file; the
# loop device is 200 MiB + 12 KiB and holds its last 199 MiB + 12 KiB, so the boundary falls
# inside the device's own pages (a page is first written at home), 12 KiB short of a MiB
# boundary: sequential 512 KiB requests cross it, and the data path splits them. Checked:
# - naming a backing where the image belongs is refused and names the pool's image;
# - `rewind stats --json` lists the pool's three files, and no file is sparse;
# - fio with crc32c verification, sequential then random (redirected writes land on both
#   backings), reads back every block; the loop device holds data after its label;
# - a view of a safe point is that safe point byte for byte while the live device moves on;
# - a `kill -9` of the daemon under fio verify, then `rewind recover`: no I/O error;
# - a rollback makes the device that safe point again, byte for byte;
# - `rewind del`, then `rewind check` of the pool is clean, and it serves again.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/pool.img
file=$WORKDIR/one.img
raw=$WORKDIR/two.raw
size_mib=192
size=$((size_mib << 20))
pick_fio_engine

# sum DEVICE: the sha256 of the whole device, read past the page cache (a rollback changes
# the device under it).
sum() { dd if="$1" bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1; }

truncate -s $(((200 << 20) + 12288)) "$raw"
loopdev=$(loop_attach "$raw")
say "rewind create $img --size ${size_mib}M --history 128M --backing $file --backing $loopdev"
out=$(rewind create "$img" --size "${size_mib}M" --history 128M --backing "$file" \
    --backing "$loopdev" 2>&1) || die "rewind create of the pool failed: $out"
echo "$out"
grep -q "formatted the pool" <<<"$out" || die "create did not say it made a pool"

say "a backing named where the image belongs is refused, naming the image"
for cmd in "add $loopdev" "check $file"; do
    # shellcheck disable=SC2086 # the command and its argument, split on purpose
    if out=$(rewind $cmd 2>&1); then
        die "rewind $cmd succeeded on a pool's backing: $out"
    fi
    grep -q "of the rewind pool whose image is $img" <<<"$out" ||
        die "rewind $cmd: no word of the pool: $out"
    say "  rewind $cmd: $out"
done

dev=$(add_dev "$img")
id=${dev#/dev/ublkb}
[[ $(blockdev --getsize64 "$dev") -eq $size ]] || die "$dev is not $size bytes"
json=$(rewind stats -n "$id" --json) || die "rewind stats --json failed"
for want in "\"path\":\"$img\"" "\"path\":\"$file\"" "\"path\":\"$loopdev\",\"block_device\":true"; do
    tr -d ' \n' <<<"$json" | grep -qF "$want" || die "stats --json lacks $want: $json"
done
stats=$(rewind stats -n "$id") || die "rewind stats failed"
grep '^pool' <<<"$stats"
if grep -q sparse <<<"$stats"; then die "a preallocated pool is called sparse: $stats"; fi

job=(--filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --group_reporting
    --verify=crc32c --size="$size")
say "sequential 512 KiB writes over the whole device, verified"
run_fio --name=seq "${job[@]}" --rw=write --bs=512k --iodepth=8
fio_expect write "$size"
fio_expect read "$size"
nonzero=$(dd if="$loopdev" bs=1M skip=1 count=8 2>/dev/null | tr -d '\0' | wc -c)
[[ $nonzero -gt 0 ]] || die "the loop device holds no data after its label"
say "the loop device holds the device's data ($nonzero non-zero bytes in 8 MiB)"

say "random 4 KiB writes over the whole device, verified (redirected, on both backings)"
run_fio --name=rand "${job[@]}" --rw=randwrite --bs=4k --iodepth=32 --randseed=1
fio_expect write "$size"
rewind safepoint -n "$id" --label before >/dev/null || die "rewind safepoint failed"
sum_before=$(sum "$dev")

say "more random writes; a view of 'before' still reads what the device held then"
run_fio --name=rand2 "${job[@]}" --rw=randwrite --bs=4k --iodepth=32 --randseed=2 \
    --size=32M --do_verify=0
view=$(rewind view -n "$id" --at before) || die "rewind view --at before failed"
echo "${view#/dev/ublkb}" >>"$STATE/ublk"
wait_for_dev "$view"
[[ $(sum "$view") == "$sum_before" ]] ||
    die "the view at 'before' differs from what the device held then"
del_dev "$view"

say "kill -9 of the daemon under fio verify, then rewind recover"
out=$STATE/fio-kill.out
fio --eta=never --output-format=normal,terse --name=kill "${job[@]}" --rw=randwrite --bs=4k \
    --iodepth=16 --size=32M --randseed=3 >"$out" 2>&1 &
fpid=$!
sleep 2
pid=$(daemon_pid "$id")
[[ -n $pid ]] || die "no daemon pid for $dev"
kill -9 "$pid"
wait_exited "$pid"
rewind recover -n "$id" || die "rewind recover -n $id failed"
wait_fio_round "$fpid" "$out" $((32 << 20))
no_kernel_io_errors
say "recovered; fio wrote and verified 32 MiB with no error"

say "rollback to 'before': the device is that safe point again"
rewind rollback -n "$id" --to before || die "rewind rollback failed"
[[ $(sum "$dev") == "$sum_before" ]] ||
    die "after the rollback the device differs from 'before'"

del_dev "$dev"
"$REWIND" check "$img" || die "rewind check of the pool failed"
dev=$(add_dev "$img")
[[ $(sum "$dev") == "$sum_before" ]] ||
    die "served again, the pool differs from 'before'"
del_dev "$dev"
say "a pool of a file and a block device served, crashed, recovered and rolled back; every block verified"
