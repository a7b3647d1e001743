#!/bin/bash
# bad-input: every refusal is one clear line on stderr, a non-zero exit, and changes
# nothing: the image's bytes are the same before and after, and no device is left behind.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
need_rewind

# expect_refusal WHAT PATTERN CMD...: CMD must fail, print PATTERN on stderr (one line).
expect_refusal() {
    local what=$1 pattern=$2 rc=0 err devs
    shift 2
    devs=$(count_ublk)
    err=$("$@" 2>&1 >/dev/null) || rc=$?
    [[ $rc -ne 0 ]] || die "$what: '$*' succeeded, expected a refusal"
    say "$what: rc=$rc: $err"
    grep -Eq "$pattern" <<<"$err" || die "$what: error does not say '$pattern': $err"
    # One line, apart from clap's pointer to --help after a usage error.
    [[ $(grep -Evc '^$|^For more information|^Usage:' <<<"$err") -eq 1 ]] ||
        die "$what: error is not one line: $err"
    [[ $(count_ublk) -eq $devs ]] || die "$what: a ublk device was left behind"
}
sum() { sha256sum "$1" | cut -d' ' -f1; }
count_ublk() {
    local d n=0
    for d in /sys/block/ublkb*; do [[ -e $d ]] && n=$((n + 1)); done
    echo "$n"
}

img=$WORKDIR/missing.img
expect_refusal "missing image, no --size" "does not exist.*--size" "$REWIND" add "$img"
[[ ! -e $img ]] || die "the refused add created $img"

img=$WORKDIR/disk.img
"$REWIND" create "$img" --size 64M >/dev/null
good=$(sum "$img")

cp "$img" "$WORKDIR/small.img"
truncate -s 1M "$WORKDIR/small.img"
before=$(sum "$WORKDIR/small.img")
expect_refusal "image too small" "too small|smaller" "$REWIND" add "$WORKDIR/small.img"
[[ $(sum "$WORKDIR/small.img") == "$before" ]] || die "the refused add changed small.img"

cp "$img" "$WORKDIR/corrupt.img"
# Flip bytes inside both superblock copies (offsets 0 and 4096).
printf 'garbage!' | dd of="$WORKDIR/corrupt.img" bs=1 seek=20 conv=notrunc 2>/dev/null
printf 'garbage!' | dd of="$WORKDIR/corrupt.img" bs=1 seek=4116 conv=notrunc 2>/dev/null
before=$(sum "$WORKDIR/corrupt.img")
expect_refusal "corrupt superblock" "corrupt|checksum" "$REWIND" add "$WORKDIR/corrupt.img"
[[ $(sum "$WORKDIR/corrupt.img") == "$before" ]] || die "the refused add changed corrupt.img"

dd if=/dev/urandom of="$WORKDIR/foreign.img" bs=1M count=200 2>/dev/null
before=$(sum "$WORKDIR/foreign.img")
expect_refusal "foreign file" "not a rewind image" "$REWIND" add "$WORKDIR/foreign.img"
[[ $(sum "$WORKDIR/foreign.img") == "$before" ]] || die "the refused add changed foreign.img"
rm -f "$WORKDIR/foreign.img"

expect_refusal "size not a page multiple" "4096|page" "$REWIND" create "$WORKDIR/odd.img" --size 10000

# A preallocated image larger than the file system is refused with what it needs and what
# is free, and its file removed. Only on a tmpfs (the guest's /tmp), which refuses at once
# a reservation larger than itself; a disk would fill up first.
if grep -q "^tmpfs $SCRATCH tmpfs " /proc/mounts; then
    expect_refusal "image larger than the free space" "ENOSPC.*--sparse" \
        "$REWIND" create "$WORKDIR/huge.img" --size 64G
    [[ ! -e $WORKDIR/huge.img ]] || die "the refused create left huge.img behind"
else
    say "(not checked: an image larger than the file system; $SCRATCH is not a tmpfs)"
fi

dev=$(add_dev "$img")
expect_refusal "second daemon on the same image" "in use" "$REWIND" add "$img"
del_dev "$dev"
[[ $(sum "$img") != "$good" ]] || say "(the image changed by being served, as it should: a new session)"

say "every refusal was one clear line and changed nothing"
