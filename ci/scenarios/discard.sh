#!/bin/bash
# discard: DISCARD and WRITE_ZEROES through the real block layer read back as zeros, the
# rest of the device is untouched, and it all holds across a restart.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
dev=$(add_dev "$img" --size 128M)
say "fill the device with random data"
dd if=/dev/urandom of="$WORKDIR/pattern" bs=1M count=128 2>/dev/null
dd if="$WORKDIR/pattern" of="$dev" bs=1M oflag=direct 2>/dev/null || die "writing the pattern failed"
sync
blockdev --flushbufs "$dev"

say "discard 16 MiB at 8 MiB, write zeroes over 4 MiB at 64 MiB"
blkdiscard -o $((8 << 20)) -l $((16 << 20)) "$dev" || die "blkdiscard failed"
# -z: BLKZEROOUT, which the block layer sends as WRITE_ZEROES since the device offers it.
blkdiscard -z -o $((64 << 20)) -l $((4 << 20)) "$dev" || die "blkdiscard -z failed"
sync

# range_sum FILE OFFSET_MIB LENGTH_MIB: sha256 of that range (busybox cmp has no offsets).
range_sum() {
    dd if="$1" bs=1M skip="$2" count="$3" 2>/dev/null | sha256sum | cut -d' ' -f1
}
zero_sum() {
    dd if=/dev/zero bs=1M count="$1" 2>/dev/null | sha256sum | cut -d' ' -f1
}
check() {
    local when=$1
    blockdev --flushbufs "$dev"
    dd if="$dev" of="$WORKDIR/now" bs=1M iflag=direct 2>/dev/null || die "reading $dev failed"
    [[ $(range_sum "$WORKDIR/now" 8 16) == "$(zero_sum 16)" ]] ||
        die "$when: discarded range does not read as zeros"
    [[ $(range_sum "$WORKDIR/now" 64 4) == "$(zero_sum 4)" ]] ||
        die "$when: write-zeroes range does not read as zeros"
    local r
    for r in "0 8" "24 40" "68 60"; do
        # shellcheck disable=SC2086 # two numbers
        [[ $(range_sum "$WORKDIR/now" $r) == $(range_sum "$WORKDIR/pattern" $r) ]] ||
            die "$when: data at MiB range ($r) changed"
    done
    say "$when: discarded and zeroed ranges read as zeros, the rest is intact"
}
check "live"
del_dev "$dev"
dev=$(add_dev "$img")
check "after a restart"
del_dev "$dev"
say "DISCARD and WRITE_ZEROES read as zeros, live and after a restart"
