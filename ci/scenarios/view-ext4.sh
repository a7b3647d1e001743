#!/bin/bash
# view-ext4: get files back from a view of an earlier safe point, named by a time.
#
# ext4 files made and synced, and the filesystem frozen and thawed; once an idle safe
# point holds them, the time is noted; the files are deleted and synced. `rewind view --at
# "YYYY-MM-DD HH:MM:SS"` (the newest safe point at or before it) mounted `ro,noload` has
# every file with its checksum, while the live filesystem (still mounted) has them no
# more; a second view by age (`--at 0s`: now) shows the deletion. e2fsck of the view is
# clean. Unmounted and deleted, the view is gone and the live device mounts clean.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
mnt=$WORKDIR/mnt
past=$WORKDIR/past
mkdir -p "$mnt" "$past"
dev=$(add_dev "$img" --size 256M --idle 1)
id=${dev#/dev/ublkb}
mkfs.ext4 -q -F "$dev" || die "mkfs.ext4 failed"
mount -t ext4 "$dev" "$mnt" || die "mount failed"
mkdir -p "$mnt/keep"
for i in $(seq 1 40); do
    dd if=/dev/urandom of="$mnt/keep/f$i" bs=1k count=$((i * 7)) 2>/dev/null
done
(cd "$mnt" && find keep -type f | sort | xargs sha256sum) >"$WORKDIR/sums"
sync
# The view is mounted with noload, which skips the journal: it shows the metadata in its
# place on the device. sync makes everything durable in the journal, but writes only part
# of it to its place, depending on timing (once, under CPU load, the bitmaps and group
# descriptors stayed behind: e2fsck -n of the view failed, though it was a correct image
# of the device at that safe point). Freezing the filesystem writes all of it in place.
fsfreeze --freeze "$mnt" || die "fsfreeze --freeze $mnt failed"
fsfreeze --unfreeze "$mnt" || die "fsfreeze --unfreeze $mnt failed"
# An idle safe point follows 1 s without writes; the time is taken after it.
sleep 3
when=$(date '+%Y-%m-%d %H:%M:%S')
sleep 1
rm -rf "$mnt/keep"
sync
sleep 2
rewind log -n "$id"

say "rewind view -n $id --at '$when'"
view=$(rewind view -n "$id" --at "$when") || die "rewind view --at '$when' failed"
echo "${view#/dev/ublkb}" >>"$STATE/ublk"
wait_for_dev "$view"
e2fsck -fn "$view" || die "e2fsck of the view found problems"
mount -t ext4 -o ro,noload "$view" "$past" || die "mount -o ro,noload $view failed"
(cd "$past" && sha256sum -c "$WORKDIR/sums") >/dev/null || die "files differ in the view"
say "all $(wc -l <"$WORKDIR/sums") files in the view with the right checksums"
[[ ! -e $mnt/keep ]] || die "the live filesystem has the deleted files"
cp "$past/keep/f7" "$WORKDIR/f7"
grep -q "$(sha256sum <"$WORKDIR/f7" | cut -d' ' -f1)" "$WORKDIR/sums" || die "copied file differs"

say "a view of now (--at 0s) shows the files deleted"
now_view=$(rewind view -n "$id" --at 0s) || die "rewind view --at 0s failed"
echo "${now_view#/dev/ublkb}" >>"$STATE/ublk"
wait_for_dev "$now_view"
mkdir -p "$WORKDIR/now"
mount -t ext4 -o ro,noload "$now_view" "$WORKDIR/now" || die "mount of $now_view failed"
[[ ! -e $WORKDIR/now/keep ]] || die "the view of now still has the deleted files"
umount "$WORKDIR/now"

say "a view in use is not deleted"
if rewind del -n "${view#/dev/ublkb}" 2>"$WORKDIR/err"; then
    die "rewind del of a mounted view succeeded"
fi
grep -q "in use" "$WORKDIR/err" || die "the refusal does not say in use: $(cat "$WORKDIR/err")"
umount "$past"
del_dev "$view"
del_dev "$now_view"
umount "$mnt"
e2fsck -fn "$dev" || die "e2fsck of the live device found problems"
del_dev "$dev"
no_kernel_io_errors
say "files back from a view found by time; the live filesystem untouched"
