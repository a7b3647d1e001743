#!/bin/bash
# rollback-offline: data written through the kernel, a labelled safe point, more data,
# then `rewind rollback IMAGE --to LABEL` on the stopped image brings the first data back
# byte for byte, and rolling forward to the state it left brings the second back.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
dd if=/dev/urandom of="$WORKDIR/a" bs=1M count=32 2>/dev/null
dd if=/dev/urandom of="$WORKDIR/b" bs=1M count=16 2>/dev/null
sum() { sha256sum "$1" | cut -d' ' -f1; }
device_sum() {
    dd if="$1" bs=1M count=32 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1
}

dev=$(add_dev "$img" --size 64M)
dd if="$WORKDIR/a" of="$dev" bs=1M oflag=direct 2>/dev/null || die "writing A failed"
want_a=$(device_sum "$dev")
[[ $want_a == $(sum "$WORKDIR/a") ]] || die "device does not hold A after writing it"
rewind safepoint -n "${dev#/dev/ublkb}" --label before || die "rewind safepoint failed"
# B over the middle of A: pages 4 MiB .. 20 MiB change after the safe point.
dd if="$WORKDIR/b" of="$dev" bs=1M seek=4 oflag=direct 2>/dev/null || die "writing B failed"
want_b=$(device_sum "$dev")
[[ $want_b != "$want_a" ]] || die "writing B changed nothing"
del_dev "$dev"

say "rewind rollback $img --to before"
out=$(rewind rollback "$img" --to before --json) || die "rewind rollback failed"
echo "$out"
undo=$(sed -n 's/.*"undo": *\([0-9]*\).*/\1/p' <<<"$out")
[[ -n $undo ]] || die "no undo id in: $out"
dev=$(add_dev "$img")
[[ $(device_sum "$dev") == "$want_a" ]] || die "after the rollback the device is not A"
say "the device is A again"
del_dev "$dev"

say "rewind rollback $img --to $undo (undo)"
rewind rollback "$img" --to "$undo" || die "rolling forward failed"
dev=$(add_dev "$img")
[[ $(device_sum "$dev") == "$want_b" ]] || die "after rolling forward the device is not B"
del_dev "$dev"
rewind log "$img"
say "rollback to a labelled safe point and its undo both read back exactly"
