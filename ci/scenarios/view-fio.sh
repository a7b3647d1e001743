#!/bin/bash
# view-fio: a view shows a past safe point byte for byte while the live device runs on.
#
# fio writes pattern A over 64 MiB, `rewind safepoint --label a` marks it, fio overwrites
# the same 64 MiB with pattern B, `rewind safepoint --label b`. Two views at once: the one
# at `a` must verify pattern A and have A's checksum, the one at `b` pattern B; the live
# device must still verify B. A view is read only (blockdev --getro, a write fails), is
# listed by `rewind list` as a view, and marked in `rewind log`. `rewind del` of a view
# leaves the live device running; `rewind del` of the live device deletes its views first.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

MIB=64
img=$WORKDIR/disk.img
pick_fio_engine
dev=$(add_dev "$img" --size 256M)
id=${dev#/dev/ublkb}

# pattern NAME BYTE DEVICE ARGS...: fio with a fixed verify pattern over the first MIB MiB.
pattern() {
    local name=$1 byte=$2 target=$3
    shift 3
    run_fio --name="$name" --filename="$target" --ioengine="$FIO_ENGINE" --direct=1 \
        --iodepth=16 --bs=64k --size="${MIB}M" --verify=pattern --verify_pattern="$byte" \
        --group_reporting "$@"
}

say "pattern A (0x0a), then a safe point labelled a"
pattern write-a 0x0a0a0a0a "$dev" --rw=write --do_verify=0
fio_expect write $((MIB << 20))
sum_a=$(dd if="$dev" bs=1M count=$MIB 2>/dev/null | sha256sum | cut -d' ' -f1)
rewind safepoint -n "$id" --label a || die "rewind safepoint --label a failed"
say "pattern B (0x0b) over the same $MIB MiB, random 4 KiB writes, then safe point b"
pattern write-b 0x0b0b0b0b "$dev" --rw=randwrite --bs=4k --do_verify=0
fio_expect write $((MIB << 20))
rewind safepoint -n "$id" --label b || die "rewind safepoint --label b failed"

say "rewind view -n $id --at a"
view_a=$(rewind view -n "$id" --at a) || die "rewind view --at a failed"
[[ $view_a =~ ^/dev/ublkb[0-9]+$ ]] || die "rewind view printed '$view_a', expected /dev/ublkbN"
echo "${view_a#/dev/ublkb}" >>"$STATE/ublk"
wait_for_dev "$view_a"
json=$(rewind view -n "$id" --at b --json) || die "rewind view --at b --json failed"
echo "$json"
view_b=$(sed -n 's/.*"device": *"\([^"]*\)".*/\1/p' <<<"$json")
[[ $view_b =~ ^/dev/ublkb[0-9]+$ ]] || die "no device in the view's json: $json"
echo "${view_b#/dev/ublkb}" >>"$STATE/ublk"
wait_for_dev "$view_b"
[[ $view_a != "$view_b" && $view_a != "$dev" ]] || die "views must be new devices: $dev $view_a $view_b"

say "the view at a verifies pattern A and has its checksum; the view at b verifies B"
pattern verify-a 0x0a0a0a0a "$view_a" --rw=read --verify_only=1 --readonly
sum_view=$(dd if="$view_a" bs=1M count=$MIB 2>/dev/null | sha256sum | cut -d' ' -f1)
[[ $sum_view == "$sum_a" ]] || die "the view at a differs from what the device held at a"
pattern verify-b 0x0b0b0b0b "$view_b" --rw=read --verify_only=1 --readonly
say "the live device still verifies pattern B"
pattern verify-live 0x0b0b0b0b "$dev" --rw=read --verify_only=1 --readonly

say "a view is read only"
[[ $(blockdev --getro "$view_a") == 1 ]] || die "blockdev --getro $view_a is not 1"
if dd if=/dev/zero of="$view_a" bs=4k count=1 conv=notrunc 2>/dev/null; then
    die "a write to the view $view_a succeeded"
fi

list=$(rewind list) || die "rewind list failed"
echo "$list"
grep -E "^${view_a#/dev/ublkb} .*view of $dev at safe point" <<<"$list" >/dev/null ||
    die "rewind list does not show $view_a as a view of $dev"
log=$(rewind log -n "$id") || die "rewind log failed"
echo "$log"
grep -E " a .*view ublkb${view_a#/dev/ublkb}" <<<"$log" >/dev/null ||
    die "rewind log does not mark safe point a as held by $view_a"
stats=$(rewind stats -n "$id") || die "rewind stats failed"
echo "$stats"
grep -q "^view .*$view_b at safe point" <<<"$stats" || die "rewind stats does not show $view_b"

say "rewind del of a view: the live device runs on"
del_dev "$view_a"
[[ -b $view_b ]] || die "deleting $view_a took $view_b with it"
pattern verify-live2 0x0b0b0b0b "$dev" --rw=read --verify_only=1 --readonly
log=$(rewind log -n "$id")
! grep -q "view ublkb${view_a#/dev/ublkb}" <<<"$log" || die "the log still shows the deleted view"
pattern write-c 0x0c0c0c0c "$dev" --rw=write --size=4M --do_verify=1
pattern verify-b2 0x0b0b0b0b "$view_b" --rw=read --verify_only=1 --readonly --offset=4M --size=60M

say "rewind del of the live device deletes its views first"
del_dev "$dev"
[[ ! -b $view_b ]] || die "$view_b outlived its live device"
grep -vx "${view_b#/dev/ublkb}" "$STATE/ublk" >"$STATE/ublk.new" || true
mv "$STATE/ublk.new" "$STATE/ublk"
no_kernel_io_errors
say "views at a and b were exact, read only, listed; deleting them left the live device be"
