#!/bin/bash
# rollback-live: ext4 files made and synced, a labelled safe point, the files deleted and
# synced; a rollback of the mounted device is refused; unmounted, the live device is rolled
# back: mount, files back with the right checksums, e2fsck clean; rolled forward: gone again.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
mnt=$WORKDIR/mnt
mkdir -p "$mnt"
dev=$(add_dev "$img" --size 256M)
id=${dev#/dev/ublkb}
mkfs.ext4 -q -F "$dev" || die "mkfs.ext4 failed"
mount -t ext4 "$dev" "$mnt" || die "mount failed"
mkdir -p "$mnt/keep"
for i in $(seq 1 40); do
    dd if=/dev/urandom of="$mnt/keep/f$i" bs=1k count=$((i * 7)) 2>/dev/null
done
(cd "$mnt" && find keep -type f | sort | xargs sha256sum) >"$WORKDIR/sums"
sync
rewind safepoint -n "$id" --label with-files || die "rewind safepoint failed"
rm -rf "$mnt/keep"
sync

say "a rollback of the mounted device must be refused"
if err=$(rewind rollback -n "$id" --to with-files 2>&1); then
    die "rollback of a mounted device succeeded"
fi
say "refused: $err"
grep -q "in use" <<<"$err" || die "the refusal does not say the device is in use: $err"
[[ ! -e $mnt/keep ]] || die "the refused rollback changed the mounted filesystem"

umount "$mnt"
out=$(rewind rollback -n "$id" --to with-files --json) || die "rollback failed"
echo "$out"
undo=$(sed -n 's/.*"undo": *\([0-9]*\).*/\1/p' <<<"$out")
[[ -n $undo ]] || die "no undo id in: $out"
e2fsck -fn "$dev" || die "e2fsck after the rollback found problems"
mount -t ext4 "$dev" "$mnt" || die "mount after the rollback failed"
(cd "$mnt" && sha256sum -c "$WORKDIR/sums") >/dev/null || die "files differ after the rollback"
say "all $(wc -l <"$WORKDIR/sums") files back with the right checksums, e2fsck clean"
umount "$mnt"

rewind rollback -n "$id" --to "$undo" || die "rolling forward failed"
mount -t ext4 "$dev" "$mnt" || die "mount after rolling forward failed"
[[ ! -e $mnt/keep ]] || die "the files are still there after rolling forward"
umount "$mnt"
e2fsck -fn "$dev" || die "e2fsck after rolling forward found problems"
rewind log -n "$id"
del_dev "$dev"
say "live rollback and its undo: refused while mounted, exact after, filesystem clean"
