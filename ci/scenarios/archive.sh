#!/bin/bash
# archive: history leaves the machine as a file, and comes back byte for byte.
#
# ext4 on the device; five rounds of file changes (new files, a deleted one, fstrim; the
# first also fills most of the device with one file), each frozen and thawed, then a labelled safe point r1..r5. `rewind export` writes a full archive
# of r1..r3 and, piped through `cat`, an incremental one of the changes after r3 up to r5.
# `rewind archive ls` lists them and `archive verify` checks them. `rewind import` restores
# r1, r2 and r3 from the full archive and r4 and r5 from the chain of both: each restored
# image equals the view of its safe point byte for byte, and e2fsck finds r5 clean. r5 is
# also restored onto a block device (a second rewind device filled with 0xff first): it
# equals the view too, so the pages that read as zeros were zeroed. A truncated archive, a
# flipped byte and an incremental archive alone are refused, and a refused import leaves
# no file. Prints the export and import throughput beside a plain dd read of the device in
# this boot, and the archive's size against the pages it holds.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
mnt=$WORKDIR/mnt
pick_fio_engine
mkdir -p "$mnt"
dev=$(add_dev "$img" --size 256M --history 256M)
id=${dev#/dev/ublkb}
mkfs.ext4 -q -F "$dev" || die "mkfs.ext4 failed"
mount -t ext4 "$dev" "$mnt" || die "mount failed"

# round N: new files, one deleted, blocks trimmed; frozen so the safe point is clean.
round() {
    local n=$1 i
    mkdir -p "$mnt/r$n"
    for i in $(seq 1 12); do
        dd if=/dev/urandom of="$mnt/r$n/f$i" bs=4k count=$((i * 40 + n)) 2>/dev/null
    done
    # Round 1 also fills most of the device, so that the throughput figures below read
    # data, not holes.
    [[ $n -eq 1 ]] && dd if=/dev/urandom of="$mnt/r1/big" bs=1M count=120 2>/dev/null
    [[ $n -gt 1 ]] && rm -f "$mnt/r$((n - 1))/f3"
    sync
    fstrim "$mnt" 2>/dev/null || true
    fsfreeze --freeze "$mnt" || die "fsfreeze --freeze"
    rewind safepoint -n "$id" --label "r$n" >/dev/null || die "safepoint r$n"
    fsfreeze --unfreeze "$mnt" || die "fsfreeze --unfreeze"
}
for n in 1 2 3 4 5; do round "$n"; done
say "five rounds made, safe points r1..r5"

# Throughput baseline: a plain read of the whole device.
t0=$(now_s)
dd if="$dev" of=/dev/null bs=1M iflag=direct 2>/dev/null || die "dd of $dev"
t1=$(now_s)
dd_mib_s=$(awk -v t="$(ms_between "$t0" "$t1")" 'BEGIN { printf "%.1f", 256 * 1000 / (t > 0 ? t : 1) }')

full=$WORKDIR/full.rwa
incr=$WORKDIR/incr.rwa
t0=$(now_s)
rewind export -n "$id" --from r1 --to r3 -o "$full" || die "export of r1..r3"
t1=$(now_s)
export_ms=$(ms_between "$t0" "$t1")
rewind export -n "$id" --from r3 --to r5 --incremental -o - | cat >"$incr" ||
    die "incremental export of r3..r5 through a pipe"
rewind archive ls "$full" | sed 's/^/    /'
rewind archive ls "$incr" | sed 's/^/    /'
rewind archive verify "$full" "$incr" | sed 's/^/    /' || die "archive verify of good archives failed"
full_bytes=$(stat -c %s "$full")

# expect_same_as_view FILE_OR_DEVICE LABEL: byte for byte what the view of LABEL reads.
expect_same_as_view() {
    local got=$1 label=$2 view
    view=$(rewind view -n "$id" --at "$label" | tail -n 1)
    [[ $view =~ ^/dev/ublkb[0-9]+$ ]] || die "rewind view --at $label printed '$view'"
    echo "${view#/dev/ublkb}" >>"$STATE/ublk"
    wait_for_dev "$view"
    cmp "$got" "$view" || die "$got differs from the view of $label"
    rewind del -n "${view#/dev/ublkb}" >/dev/null || die "closing the view of $label"
    say "$label: restored image equals the view of $label"
}

import_ms=()
for label in r1 r2 r3; do
    out=$WORKDIR/$label.img
    t0=$(now_s)
    rewind import "$full" --at "$label" -o "$out" | sed 's/^/    /' || die "import of $label"
    t1=$(now_s)
    import_ms+=("$(ms_between "$t0" "$t1")")
    expect_same_as_view "$out" "$label"
    rm -f "$out"
done
for label in r4 r5; do
    out=$WORKDIR/$label.img
    rewind import "$full" "$incr" --at "$label" -o "$out" | sed 's/^/    /' ||
        die "import of $label from the chain"
    expect_same_as_view "$out" "$label"
done
e2fsck -fn "$WORKDIR/r5.img" >"$STATE/fsck" 2>&1 || {
    cat "$STATE/fsck"
    die "e2fsck of the restored r5 is not clean"
}
say "e2fsck of the restored r5: clean"
rm -f "$WORKDIR/r4.img"

# Onto a block device: another rewind device, all 0xff first.
target=$(add_dev "$WORKDIR/target.img" --size 256M --sparse)
run_fio --name=fill --filename="$target" --ioengine="$FIO_ENGINE" --direct=1 --rw=write --bs=1M \
    --size=256M --buffer_pattern=0xff
rewind import "$full" "$incr" --at r5 -o "$target" | sed 's/^/    /' || die "import onto $target"
expect_same_as_view "$target" r5
del_dev "$target"

# Refusals, and a refused import leaves nothing behind.
head -c $((full_bytes - 5000)) "$full" >"$WORKDIR/cut.rwa"
cp "$full" "$WORKDIR/flip.rwa"
printf '\x5a' | dd of="$WORKDIR/flip.rwa" bs=1 seek=$((full_bytes / 2)) conv=notrunc 2>/dev/null
for bad in "cut.rwa:truncated" "flip.rwa:corrupt"; do
    file=$WORKDIR/${bad%%:*}
    rc=0
    err=$(rewind import "$file" -o "$WORKDIR/bad.img" 2>&1 >/dev/null) || rc=$?
    [[ $rc -ne 0 ]] || die "import of ${bad%%:*} succeeded"
    grep -q "${bad#*:}" <<<"$err" || die "import of ${bad%%:*}: $err"
    ! rewind archive verify "$file" >/dev/null 2>&1 || die "verify of ${bad%%:*} passed"
    say "refused ${bad%%:*}: $err"
    rm -f "$file"
done
rc=0
err=$(rewind import "$incr" -o "$WORKDIR/bad.img" 2>&1 >/dev/null) || rc=$?
[[ $rc -ne 0 ]] && grep -q incremental <<<"$err" || die "an incremental archive alone: $err"
say "refused the incremental archive alone: $err"
leftovers=$(ls -A "$WORKDIR" | grep -E '^(bad\.img|\..*partial)' || true)
[[ -z $leftovers ]] || die "refused imports left $leftovers"

data_pages=$(rewind archive ls "$full" --json | tr -d ' \n' | grep -o '"data_bytes":[0-9]*' |
    cut -d: -f2 | awk '{ s += $1 } END { print s / 4096 }')
awk -v e="$export_ms" -v b="$full_bytes" -v dd="$dd_mib_s" -v i="$(median "${import_ms[@]}")" \
    -v p="$data_pages" 'BEGIN {
        ex = b / 1048576 * 1000 / (e > 0 ? e : 1); im = b / 1048576 * 1000 / (i > 0 ? i : 1)
        printf "archive: export %.1f MiB/s (%.2fx dd), import %.1f MiB/s (%.2fx dd), dd read of the device %.1f MiB/s\n", ex, ex / dd, im, im / dd, dd
        printf "archive: %d bytes for %d pages of data: %.4f bytes per data byte\n", b, p, b / (p * 4096)
    }' | while read -r line; do say "$line"; done

umount "$mnt"
del_dev "$dev"
say "archive: export, import and verify as promised"
