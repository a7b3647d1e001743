#!/bin/bash
# scale: a 16 TiB device with 1 TiB of history (more pages than 32 bits number: format
# version 4), served from a sparse image on the guest's tmpfs. ext4 made on it and
# mounted, files written in several of its block
# groups, then the device deleted and added again (an open after a clean stop), and after a
# `kill -9` recovered (journal replay); the files read back by checksum each time, e2fsck
# is clean and the kernel logged no I/O error. Prints the time of each open and the
# daemon's peak memory (VmHWM) after each phase: they follow the parts of the device
# written (each 16 MiB with a page written costs a leaf of the map), not its 16 TiB.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

SIZE=${SCALE_SIZE:-16T}
HISTORY=${SCALE_HISTORY:-1T}
img=$WORKDIR/big.img
mnt=$WORKDIR/mnt
mkdir -p "$mnt"

# hwm ID: the daemon's peak resident memory, MiB.
hwm() {
    awk '/^VmHWM:/ { printf "%d\n", $2 / 1024 }' "/proc/$(daemon_pid "$1")/status"
}

t0=$(now_s)
rewind create "$img" --size "$SIZE" --history "$HISTORY" --sparse ||
    die "rewind create of a $SIZE device failed"
say "created a $SIZE device with $HISTORY of history in $(ms_between "$t0" "$(now_s)") ms; the image takes $(du -k "$img" | cut -f1) KiB of tmpfs"
t0=$(now_s)
dev=$(add_dev "$img")
id=${dev#/dev/ublkb}
say "SCALE add (fresh): $(ms_between "$t0" "$(now_s)") ms, daemon peak $(hwm "$id") MiB"
# SIZE in bytes: a number with a G or T suffix (powers of 1024).
case $SIZE in
    *T) want=$((${SIZE%T} << 40)) ;;
    *G) want=$((${SIZE%G} << 30)) ;;
    *) die "SCALE_SIZE=$SIZE: give it in G or T" ;;
esac
[[ $(blockdev --getsize64 "$dev") -eq $want ]] ||
    die "$dev is $(blockdev --getsize64 "$dev") bytes, not $SIZE"

# Lazy init: mke2fs writes the group descriptors and a little more, not every bitmap and
# inode table of 131,072 block groups (the kernel fills those in as it goes).
t0=$(now_s)
mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1,nodiscard "$dev" ||
    die "mkfs.ext4 of $SIZE failed"
say "mkfs.ext4: $(ms_between "$t0" "$(now_s)") ms, daemon peak $(hwm "$id") MiB"
mount -t ext4 -o noinit_itable "$dev" "$mnt" || die "mount failed"
# Files in directories of their own: ext4 spreads top-level directories over the block
# groups (Orlov), so the writes land far apart on the 16 TiB.
for d in 1 2 3 4 5 6 7 8; do
    mkdir "$mnt/d$d"
    head -c $((4 << 20)) /dev/urandom >"$mnt/d$d/f"
done
sync
(cd "$mnt" && sha256sum d*/f) >"$STATE/sums"
say "wrote 8 files of 4 MiB in 8 directories; daemon peak $(hwm "$id") MiB"
umount "$mnt"

check_sums() {
    local what=$1
    mount -t ext4 -o noinit_itable "$dev" "$mnt" || die "$what: mount failed"
    (cd "$mnt" && sha256sum -c "$STATE/sums") >/dev/null || die "$what: the files differ"
    umount "$mnt"
    say "$what: the 8 files read back by checksum"
}

del_dev "$dev"
t0=$(now_s)
timeout "$REWIND_CMD_TIMEOUT" "$REWIND" check "$img" >/dev/null ||
    die "rewind check failed (or took over ${REWIND_CMD_TIMEOUT}s) after a clean stop"
say "SCALE check: $(ms_between "$t0" "$(now_s)") ms"
t0=$(now_s)
dev=$(add_dev "$img")
id=${dev#/dev/ublkb}
say "SCALE add after a clean stop: $(ms_between "$t0" "$(now_s)") ms, daemon peak $(hwm "$id") MiB"
check_sums "after a clean stop"

# Another file, then the daemon killed: what was written since the last checkpoint is in
# the journal only, and the next open replays it.
mount -t ext4 -o noinit_itable "$dev" "$mnt" || die "mount failed"
head -c $((4 << 20)) /dev/urandom >"$mnt/d1/g"
sync
(cd "$mnt" && sha256sum d*/f d1/g) >"$STATE/sums"
umount "$mnt"
pid=$(daemon_pid "$id")
kill -9 "$pid"
wait_exited "$pid"
t0=$(now_s)
rewind recover -n "$id" >/dev/null || die "rewind recover -n $id failed"
say "SCALE recover after kill -9: $(ms_between "$t0" "$(now_s)") ms, daemon peak $(hwm "$id") MiB"
check_sums "after a kill -9"
e2fsck -fn "$dev" >"$STATE/fsck.out" 2>&1 || {
    tail -n 20 "$STATE/fsck.out"
    die "e2fsck found errors on the $SIZE device"
}
say "e2fsck -fn clean; daemon peak $(hwm "$id") MiB"
del_dev "$dev"
no_kernel_io_errors
say "a $SIZE device: created, served, reopened and recovered at the cost of the parts written"
