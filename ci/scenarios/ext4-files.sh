#!/bin/bash
# ext4-files: a real filesystem on rewind keeps every file intact across a daemon restart
# and stays consistent (e2fsck -fn clean).
#
# A tree of a few hundred files of mixed sizes (1 byte to 4 MiB, most not a multiple of
# 4 KiB) in nested directories, filled from /dev/urandom; their sha256 sums are kept on
# /tmp, outside the device, and checked after umount, rewind del, rewind add, mount.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

SIZE_MIB=${EXT4_SIZE_MIB:-512}
NFILES=${EXT4_FILES:-300}
img=$WORKDIR/disk.img
mnt=$WORKDIR/mnt
sums=$WORKDIR/sha256sums
mkdir -p "$mnt"

dev=$(add_dev "$img" --size "${SIZE_MIB}M")
say "mkfs.ext4 $dev"
mkfs.ext4 -q -F "$dev" || die "mkfs.ext4 $dev failed"
mount -t ext4 "$dev" "$mnt" || die "mount $dev failed"

# Sizes by file number: 1 byte, under a page, then ever larger up to 4 MiB. $RANDOM is
# seeded so that a failing run can be repeated with the same tree.
RANDOM=4242
size_of() {
    case $(($1 % 10)) in
    0) echo 1 ;;
    1) echo $((RANDOM % 4095 + 1)) ;;
    2 | 3 | 4) echo $((4096 + RANDOM * 2)) ;;
    5 | 6) echo $((65536 + RANDOM * 14)) ;;
    7) echo $((524288 + RANDOM * 16)) ;;
    8) echo $((1048576 + RANDOM * 32)) ;;
    9) echo $((2097152 + RANDOM * 64)) ;;
    esac
}
say "writing $NFILES files under $mnt"
total=0
for ((i = 0; i < NFILES; i++)); do
    dir=$mnt/d$((i % 6))/e$((i % 4))
    if [[ $((i % 3)) -eq 0 ]]; then dir=$dir/f$((i % 5)); fi
    mkdir -p "$dir"
    n=$(size_of "$i")
    head -c "$n" /dev/urandom >"$dir/file-$i.bin"
    total=$((total + n))
done
say "wrote $NFILES files, $((total >> 20)) MiB; df: $(df -k "$mnt" | awk 'NR == 2 {print $3 " KiB used"}')"

(cd "$mnt" && find . -type f | sort | xargs sha256sum) >"$sums"
[[ $(wc -l <"$sums") -eq $NFILES ]] || die "expected $NFILES checksums, got $(wc -l <"$sums")"
sync
umount "$mnt" || die "umount $mnt failed"

say "stopping the device and serving the image again"
del_dev "$dev"
dev=$(add_dev "$img")
mount -t ext4 "$dev" "$mnt" || die "mount $dev after the restart failed"

say "checking $NFILES checksums"
found=$(cd "$mnt" && find . -type f | wc -l)
[[ $found -eq $NFILES ]] || die "expected $NFILES files after the restart, found $found"
if ! (cd "$mnt" && sha256sum -c "$sums") >"$WORKDIR/check.out" 2>&1; then
    grep -v ': OK$' "$WORKDIR/check.out" | head -n 50
    die "$(grep -vc ': OK$' "$WORKDIR/check.out") file(s) differ after the restart"
fi
ok=$(grep -c ': OK$' "$WORKDIR/check.out")
[[ $ok -eq $NFILES ]] || die "only $ok of $NFILES checksums reported OK"
umount "$mnt" || die "umount $mnt failed"

say "e2fsck -fn $dev"
e2fsck -fn "$dev" || die "e2fsck -fn $dev found problems (rc=$?)"
del_dev "$dev"
say "$NFILES files ($((total >> 20)) MiB) intact after a restart, filesystem clean"
