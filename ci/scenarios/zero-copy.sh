#!/bin/bash
# zero-copy: the data path a device uses is the one `rewind list` and `rewind stats` report,
# and zero copy (UBLK_F_AUTO_BUF_REG, Linux 6.16 and later) reads and writes exactly what
# the copy path does.
#
# On every kernel: a device added with the default --data-path auto reports zero-copy where
# the driver has it and copy where it does not, and --data-path copy reports copy. On a
# kernel without it, --data-path zero-copy must fail with the reason, and the rest is
# skipped. With zero copy: fio randwrite with mixed block sizes and crc32c verification,
# from the live daemon and after a restart; pages never written read as zeros, alone and
# within requests that also carry written pages (a zero copy read fills those holes from
# /dev/zero, not in a buffer of the daemon); a view of a safe point reads as it stood.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

SIZE_MIB=${ZERO_COPY_SIZE_MIB:-256}
size=$((SIZE_MIB << 20))
img=$WORKDIR/disk.img

# data_path ID: the data path `rewind stats -n ID --json` reports.
data_path() {
    rewind stats -n "$1" --json | tr -d ' \n' | sed -n 's/.*"data_path":"\([^"]*\)".*/\1/p'
}

# expect_listed DEV PATH: rewind list shows data path PATH for DEV (a view too).
expect_listed() {
    local dev=$1 want=$2 text
    text=$(rewind list)
    grep -Eq "^${dev#/dev/ublkb} +$dev .* $want +" <<<"$text" ||
        die "rewind list does not show $want for $dev: $text"
    say "rewind list: $dev has data path $want"
}

# expect_path DEV PATH: stats --json, stats and list all report PATH for live device DEV.
expect_path() {
    local dev=$1 want=$2 id got text
    id=${dev#/dev/ublkb}
    got=$(data_path "$id")
    [[ $got == "$want" ]] || die "rewind stats --json says data_path '$got' for $dev, expected $want"
    text=$(rewind stats -n "$id")
    grep -q "^data path *${want/-/ }:" <<<"$text" || die "rewind stats does not say '${want/-/ }': $text"
    say "rewind stats: $dev has data path $want"
    expect_listed "$dev" "$want"
}

pick_fio_engine

if kernel_at_least 6.16; then want=zero-copy; else want=copy; fi
dev=$(add_dev "$img" --size "${SIZE_MIB}M")
id=${dev#/dev/ublkb}
expect_path "$dev" "$want"

copy_img=$WORKDIR/copy.img
copy_dev=$(add_dev "$copy_img" --size 64M --data-path copy)
expect_path "$copy_dev" copy
run_fio --name=copy --filename="$copy_dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16 \
    --rw=randwrite --bssplit=4k/50:64k/30:512k/20 --verify=crc32c --randrepeat=1
del_dev "$copy_dev"

if [[ $want == copy ]]; then
    err=$WORKDIR/zc.err
    if timeout "$REWIND_CMD_TIMEOUT" "$REWIND" add "$WORKDIR/zc.img" --size 64M \
        --data-path zero-copy >/dev/null 2>"$err"; then
        die "rewind add --data-path zero-copy succeeded on $KERNEL_VERSION, which has no zero copy"
    fi
    cat "$err"
    grep -q "UBLK_F_AUTO_BUF_REG" "$err" || die "rewind add --data-path zero-copy did not say why it failed"
    [[ ! -e $WORKDIR/zc.img ]] || die "the refused rewind add --data-path zero-copy created its image"
    del_dev "$dev"
    needs_kernel 6.16 "UBLK_F_AUTO_BUF_REG"
fi

# Holes: the first 2 MiB get a pattern in every other 4 KiB page (fio write:4k skips one
# page after each write); the 512 KiB reads of it then mix written pages and holes.
MIX=$((2 << 20))
pat=$WORKDIR/pattern
dd if=/dev/zero bs=4096 count=1 2>/dev/null | tr '\0' '\253' >"$pat"
dd if=/dev/zero of="$WORKDIR/zero" bs=4096 count=1 2>/dev/null
: >"$WORKDIR/expected"
for _ in $(seq $((MIX / 8192))); do cat "$pat" "$WORKDIR/zero" >>"$WORKDIR/expected"; done
say "pattern 0xab in every other page of the first 2 MiB"
run_fio --name=every-other --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --bs=4k \
    --rw=write:4k --size="$MIX" --verify=pattern --verify_pattern=0xabababab --do_verify=0
fio_expect write $((MIX / 2))

# check_holes DEV: on DEV, the mixed region reads back as expected, and the last 16 MiB,
# never written, read as zeros. Buffered reads after dropping DEV's page cache: readahead
# sends requests of many pages, which mix written pages and holes.
check_holes() {
    local target=$1 got nonzero
    blockdev --flushbufs "$target"
    got=$(dd if="$target" bs=512k count=$((MIX / (512 << 10))) 2>/dev/null | sha256sum | cut -d' ' -f1)
    [[ $got == $(sha256sum <"$WORKDIR/expected" | cut -d' ' -f1) ]] ||
        die "pages and holes of the first 2 MiB of $target read back wrong"
    nonzero=$(dd if="$target" bs=512k skip=$(((size - (16 << 20)) / (512 << 10))) count=32 \
        2>/dev/null | tr -d '\0' | wc -c)
    [[ $nonzero -eq 0 ]] || die "never written pages of $target read $nonzero non-zero bytes"
    say "$target: written pages and holes read back exactly; never written pages read as zeros"
}

check_holes "$dev"

# Mixed block sizes over the rest of the first half: written, verified, and after a safe
# point partly overwritten, so a view of the safe point has something to show.
job=(--name=zero-copy --ioengine="$FIO_ENGINE" --direct=1 --iodepth=32
    --rw=randwrite --bssplit=4k/30:16k/20:64k/20:256k/15:512k/15 --verify=crc32c
    --randrepeat=1 --offset=4M --size=$((size / 2 - (4 << 20))))
say "randwrite with mixed block sizes, then verify"
run_fio "${job[@]}" --filename="$dev"
rewind safepoint -n "$id" --label mixed || die "rewind safepoint failed"
# range_sum DEV: sha256 of the range fio wrote with mixed sizes, read from DEV.
range_sum() {
    blockdev --flushbufs "$1"
    dd if="$1" bs=1M skip=4 count=$((SIZE_MIB / 2 - 4)) 2>/dev/null | sha256sum | cut -d' ' -f1
}
sum_mixed=$(range_sum "$dev")
say "overwriting the start of that range after the safe point"
run_fio --name=over --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16 \
    --rw=randwrite --bs=4k --offset=4M --size=16M --verify=pattern \
    --verify_pattern=0xcdcdcdcd --do_verify=1 --randrepeat=1

view=$(rewind view -n "$id" --at mixed) || die "rewind view --at mixed failed"
[[ $view =~ ^/dev/ublkb[0-9]+$ ]] || die "rewind view printed '$view'"
echo "${view#/dev/ublkb}" >>"$STATE/ublk"
wait_for_dev "$view"
expect_listed "$view" zero-copy
say "the view reads the mixed writes as they stood at the safe point"
[[ $(range_sum "$view") == "$sum_mixed" ]] || die "the view differs from the device at the safe point"
[[ $(range_sum "$dev") != "$sum_mixed" ]] || die "the overwrite changed nothing: the view check proves nothing"
check_holes "$view"
del_dev "$view"

say "stopping the device and serving the image again"
del_dev "$dev"
dev=$(add_dev "$img")
id=${dev#/dev/ublkb}
expect_path "$dev" zero-copy
check_holes "$dev"
run_fio --name=over --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16 --bs=4k \
    --rw=randwrite --offset=4M --size=16M --verify=pattern --verify_pattern=0xcdcdcdcd \
    --verify_only --randrepeat=1
del_dev "$dev"
no_kernel_io_errors
say "zero copy: mixed sizes, holes and a view read back exactly"
