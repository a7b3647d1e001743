#!/bin/bash
# diff: `rewind diff` names exactly the byte ranges written between two safe points, or
# since one, from the daemon's metadata.
#
# fio writes known ranges with direct I/O: 1 MiB before safe point "a" (never listed), two
# pages, then 64 KiB and the page right after it (one extent) before "b", then 12 KiB after
# "b". `rewind diff --json` between a and b, from b to now and from a to now must list
# exactly those ranges, merged where they touch; the text form prints a summary on stderr
# and one OFFSET LENGTH row per extent; the order of the two safe points does not matter;
# a safe point not in the window is refused with the reason.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
pick_fio_engine
dev=$(add_dev "$img" --size 256M)
id=${dev#/dev/ublkb}

# write_at OFFSET_KIB LENGTH_KIB: whole pages, direct, nothing else touched.
write_at() {
    run_fio --name="w$1" --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --rw=write \
        --bs=4k --offset="${1}k" --size="${2}k"
    fio_expect write $(($2 << 10))
}

# expect_diff FROM TO WANT: `rewind diff --json` from FROM to TO lists the extents WANT
# ("offset:length ..." in bytes).
expect_diff() {
    local from=$1 to=$2 want=$3 json got
    json=$(rewind diff -n "$id" --from "$from" --to "$to" --json) ||
        die "rewind diff --from $from --to $to failed"
    got=$(tr -d ' \n' <<<"$json" | grep -o '"offset":[0-9]*,"length":[0-9]*' |
        sed 's/"offset":\([0-9]*\),"length":\([0-9]*\)/\1:\2/' | tr '\n' ' ')
    [[ ${got% } == "$want" ]] || die "diff $from..$to: got '$got', want '$want' (json: $json)"
    say "diff $from..$to: $want"
}

write_at 0 1024
rewind safepoint -n "$id" --label a >/dev/null || die "safepoint a"
write_at 40 8
write_at 4096 64
write_at 4160 4
rewind safepoint -n "$id" --label b >/dev/null || die "safepoint b"
write_at 100000 12

expect_diff a b "40960:8192 4194304:69632"
expect_diff b a "40960:8192 4194304:69632"
expect_diff b now "102400000:12288"
expect_diff a now "40960:8192 4194304:69632 102400000:12288"

text=$(rewind diff -n "$id" --from a 2>"$STATE/diff.err") || die "rewind diff (text) failed"
printf '%s\n' "$text"
sed 's/^/    stderr: /' "$STATE/diff.err"
[[ $(head -n 1 <<<"$text") =~ ^\ *OFFSET\ +LENGTH$ ]] || die "no header: $text"
[[ $(tail -n +2 <<<"$text" | wc -l) -eq 3 ]] || die "expected 3 extent rows: $text"
grep -q "in 3 extents between safe point .* and now" "$STATE/diff.err" ||
    die "no summary on stderr: $(cat "$STATE/diff.err")"

rc=0
err=$(rewind diff -n "$id" --from 99999 2>&1 >/dev/null) || rc=$?
[[ $rc -ne 0 ]] || die "a diff from safe point 99999 succeeded"
grep -q "99999" <<<"$err" || die "the refusal does not name the safe point: $err"
say "refused: $err"

del_dev "$dev"
say "diff: every range as written"
