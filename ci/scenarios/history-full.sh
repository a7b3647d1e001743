#!/bin/bash
# history-full: a small history area under long overwrites: writes never fail, old safe
# points retire; a view and a pin that hold everything give way, not the live device.
#
# A 64 MiB device with 4 MiB of history. Part 1: three fio rounds each overwrite 48 MiB at
# random with verify headers and an fsync every 256 writes (safe points); every round
# must verify with no error, and between rounds the oldest safe point must move on (safe
# points retired; not after the first round, whose pages were never written before) while free pages stay above zero. Part 2: a view of an old safe point,
# that safe point pinned too, then another round: fio still has no error, the view's reads
# now fail with EIO (dd), `rewind list` and `rewind stats` say it was dropped, the daemon's
# log says why and that the pin was released, and the kernel logged no I/O error on the
# live device.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

ROUNDS=${HISTORY_FULL_ROUNDS:-3}
# Its own name: the log (rewind-IMAGE.log) is then this scenario's alone.
img=$WORKDIR/hfull.img
pick_fio_engine
log_file=$REWIND_LOG_DIR/rewind-hfull.img.log
rm -f "$log_file"
dev=$(add_dev "$img" --size 64M --history 4M)
id=${dev#/dev/ublkb}

# stat_field NAME: a number from `rewind stats --json`.
stat_field() {
    rewind stats -n "$id" --json | tr -d ' \n' | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"
}

round() {
    run_fio --name="round$1" --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 \
        --iodepth=16 --rw=randwrite --bs=4k --size=48M --fsync=256 --verify=crc32c \
        --do_verify=1 --randseed="$1" --group_reporting
    fio_expect write $((48 << 20))
}

oldest=$(stat_field oldest_safe_point)
say "part 1: $ROUNDS rounds of 48 MiB random overwrites over 4 MiB of history (oldest safe point $oldest)"
for r in $(seq 1 "$ROUNDS"); do
    round "$r"
    now_oldest=$(stat_field oldest_safe_point)
    free=$(stat_field free_pages)
    n=$(stat_field safe_points)
    say "round $r: oldest safe point $now_oldest, $n safe points, $free free pages"
    # The first round writes pages never written before, which makes no history.
    [[ $r -eq 1 || $now_oldest -gt $oldest ]] ||
        die "round $r: the oldest safe point did not move on ($oldest)"
    [[ $free -gt 0 ]] || die "round $r: no free page left"
    oldest=$now_oldest
done
rewind log -n "$id" | tail -n 5

say "part 2: a view and a pin on an old safe point, then the history fills up"
rewind safepoint -n "$id" --label old >/dev/null || die "rewind safepoint failed"
view=$(rewind view -n "$id" --at old) || die "rewind view failed"
echo "${view#/dev/ublkb}" >>"$STATE/ublk"
wait_for_dev "$view"
rewind pin -n "$id" --at old || die "rewind pin failed"
rewind log -n "$id" | grep -E " old .*pin, view ublkb${view#/dev/ublkb}" >/dev/null ||
    die "rewind log does not mark safe point old as pinned and viewed"
dd if="$view" of=/dev/null bs=1M count=4 2>/dev/null || die "the view cannot be read before the history fills"
round 99
blockdev --flushbufs "$view"
if dd if="$view" of=/dev/null bs=4k count=16 2>"$WORKDIR/dd.err"; then
    die "reading the dropped view succeeded"
fi
say "reading the dropped view failed as it must: $(head -n 1 "$WORKDIR/dd.err")"
sleep 1
list=$(rewind list) || die "rewind list failed"
echo "$list"
grep -E "^${view#/dev/ublkb} .*dropped" <<<"$list" >/dev/null || die "rewind list does not say the view was dropped"
rewind stats -n "$id" | tee "$WORKDIR/stats" | grep -q "^view .*dropped, reads fail" ||
    die "rewind stats does not say the view was dropped"
grep -q "view of safe point .* dropped: the history area is full" "$log_file" ||
    die "the daemon's log does not say why the view was dropped"
grep -q "pin on safe point .* released" "$log_file" || die "the daemon's log does not say the pin was released"
grep -E "dropped|released" "$log_file" | head -n 3
grep -q "^pinned" "$WORKDIR/stats" && die "the pin is still shown after its release"
errors=$(kernel_io_errors | grep -v "ublkb${view#/dev/ublkb}" || true)
[[ -z $errors ]] || die "kernel I/O errors on the live device: $errors"
del_dev "$view"
round 100
del_dev "$dev"
say "writes never failed; old safe points retired; the view and the pin gave way and said so"
