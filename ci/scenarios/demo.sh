#!/bin/bash
# demo: the README's main job. An 8 GiB image served as /dev/ublkbN, an ext4 filesystem on
# it, a file written and read back, the device listed, then stopped and served again with
# the file still there. The image is sparse: preallocated, its 10 GiB would not fit the
# guest's tmpfs /tmp (75% of its memory).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
mnt=$WORKDIR/mnt
mkdir -p "$mnt"

dev=$(add_dev "$img" --size 8G --sparse)
say "rewind list:"
list=$(rewind list)
echo "$list"
grep -q "sparse image" <<<"$list" || die "rewind list does not say the image is sparse"
mkfs.ext4 -q -F "$dev" || die "mkfs.ext4 $dev failed"
mount -t ext4 "$dev" "$mnt" || die "mount $dev failed"
head -c 10485760 /dev/urandom >"$mnt/hello.bin"
want=$(sha256sum <"$mnt/hello.bin")
sync
umount "$mnt"
del_dev "$dev"
say "served again from the same image:"
dev=$(add_dev "$img")
mount -t ext4 "$dev" "$mnt" || die "mount $dev after the restart failed"
got=$(sha256sum <"$mnt/hello.bin")
[[ $got == "$want" ]] || die "hello.bin differs after the restart"
say "hello.bin intact; df: $(df -h "$mnt" | awk 'NR == 2 {print $2 " size, " $3 " used"}')"
rewind list
umount "$mnt"
del_dev "$dev"
say "demo done: rewind served $img as $dev, ext4 on it, data kept across a restart"
