#!/bin/bash
# bisect: `rewind bisect` finds the safe point where a planted corruption first shows.
#
# ext4 on the device; twelve rounds each add a file, sync, freeze and thaw (so the view's
# noload mount sees everything in place) and label a safe point round-N. In round 8 the
# file of round 3 is overwritten with garbage in place. Flushes make safe points of their
# own between the labels. `rewind bisect --good round-1` with a command that mounts the view
# and compares the file must answer a safe point A after round-7 and no later than round-8,
# where the view of A is bad and that of the safe point before A is good (both checked
# here, outside bisect), in at most log2(N)+1 steps. Then: a command that crashes (exit
# 200) stops the search with an error, and SIGINT stops it; both leave no view behind.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
mnt=$WORKDIR/mnt
mkdir -p "$mnt" "$WORKDIR/b"
dev=$(add_dev "$img" --size 128M --idle 0)
id=${dev#/dev/ublkb}
mkfs.ext4 -q -F "$dev" || die "mkfs.ext4 failed"
mount -t ext4 "$dev" "$mnt" || die "mount failed"
dd if=/dev/urandom of="$WORKDIR/good" bs=4k count=16 2>/dev/null

for round in $(seq 1 12); do
    if [[ $round -eq 3 ]]; then
        cp "$WORKDIR/good" "$mnt/precious"
    elif [[ $round -eq 8 ]]; then
        say "round 8: the corruption: precious overwritten in place"
        dd if=/dev/urandom of="$mnt/precious" bs=4k count=2 seek=5 conv=notrunc 2>/dev/null
    fi
    dd if=/dev/urandom of="$mnt/file$round" bs=4k count=8 2>/dev/null
    sync
    fsfreeze --freeze "$mnt" && fsfreeze --unfreeze "$mnt"
    rewind safepoint -n "$id" --label "round-$round" >/dev/null || die "safepoint round-$round failed"
done
rewind log -n "$id"

# id_of LABEL: the id of the safe point with that label (log --json: a field per line).
# awk reads to the end: leaving early would close the pipe under rewind, which pipefail
# then reports.
id_of() {
    rewind log -n "$id" --json | awk -v l="\"label\": \"$1\"" '
        /"id":/ { cur = $2; gsub(/[^0-9]/, "", cur) }
        index($0, l) && !found { print cur; found = 1 }'
}
r1=$(id_of round-1)
r7=$(id_of round-7)
r8=$(id_of round-8)
[[ -n $r1 && -n $r7 && -n $r8 ]] || die "labelled safe points not found: '$r1' '$r7' '$r8'"

# The test bisect runs, also run here by hand: 0 when precious reads as it was written
# (or is not there yet), 1 when it differs; 125 when the view does not mount.
cat >"$WORKDIR/check.sh" <<EOF
#!/bin/bash
mount -t ext4 -o ro,noload "\$REWIND_VIEW" "$WORKDIR/b" || exit 125
r=0
if [[ -e $WORKDIR/b/precious ]]; then cmp -s "$WORKDIR/b/precious" "$WORKDIR/good" || r=1; fi
umount "$WORKDIR/b"
exit \$r
EOF
chmod +x "$WORKDIR/check.sh"

say "rewind bisect -n $id --good round-1 --json -- check.sh"
# Its own time limit: each step opens a view, mounts it and deletes it.
timeout 900 "$REWIND" bisect -n "$id" --good round-1 --json -- "$WORKDIR/check.sh" \
    >"$WORKDIR/out.json" 2>"$WORKDIR/err" || die "rewind bisect failed: $(cat "$WORKDIR/err")"
cat "$WORKDIR/err"
cat "$WORKDIR/out.json"
answer=$(tr -d ' \n' <"$WORKDIR/out.json" | sed -n 's/.*"first_bad":\([0-9]*\).*/\1/p')
[[ -n $answer ]] || die "no first_bad in the JSON answer"
[[ $answer -gt $r7 && $answer -le $r8 ]] ||
    die "first bad is $answer; the corruption was made after round-7 ($r7), by round-8 ($r8)"
steps=$(grep -c '"verdict"' "$WORKDIR/out.json")
# Safe points after round-1: the candidates (the live device is the bad end).
n=$(rewind log -n "$id" --json | grep -o '"id": *[0-9]*' | awk -v g="$r1" '{ if ($NF + 0 > g) n++ } END { print n + 0 }')
limit=$(awk -v n="$n" 'BEGIN { s = 0; while (n > 0) { s++; n = int(n / 2) } print s }')
say "answer $answer in $steps steps over $n safe points (at most $limit)"
[[ $steps -le $limit ]] || die "$steps steps for $n safe points; a binary search needs at most $limit"

say "checking by hand: the view of $answer is bad, that of the safe point before it good"
before=$(rewind log -n "$id" --json | grep -o '"id": *[0-9]*' | awk -v a="$answer" '{ if ($NF + 0 < a) p = $NF } END { print p }')
for at in "$answer" "$before"; do
    view=$(rewind view -n "$id" --at "$at") || die "rewind view --at $at failed"
    echo "${view#/dev/ublkb}" >>"$STATE/ublk"
    wait_for_dev "$view"
    rc=0
    REWIND_VIEW=$view "$WORKDIR/check.sh" || rc=$?
    del_dev "$view"
    want=1
    [[ $at == "$answer" ]] || want=0
    [[ $rc -eq $want ]] || die "check of safe point $at exited $rc, expected $want"
done

# no_views: only the live device is left.
no_views() {
    local left
    left=$(find /dev -maxdepth 1 -name 'ublkb*' ! -name "ublkb$id" | tr '\n' ' ')
    [[ -z $left ]] || die "views left behind after $1: $left"
}
no_views "a bisect"

say "a command that crashes (exit 200) stops the search"
if rewind bisect -n "$id" --good round-1 -- sh -c 'exit 200' 2>"$WORKDIR/err"; then
    die "rewind bisect succeeded though its command exited 200"
fi
cat "$WORKDIR/err"
grep -q "exited with 200" "$WORKDIR/err" || die "the error does not name the exit status"
no_views "a crashed command"

say "SIGINT stops the search once the command ends, and deletes the view"
# $! must be bisect's own pid: the binary itself, not lib.sh's rewind() wrapper, and
# exec'd (with traps set, bash runs a background command as the child of a subshell).
(exec "$REWIND" bisect -n "$id" --good round-1 -- sleep 3 2>"$WORKDIR/err-int") &
pid=$!
# Once step 1's command runs, bisect's handler is in (a background job starts with SIGINT
# ignored, so a signal before that would be lost).
start=$SECONDS
until grep -q "step 1 " "$WORKDIR/err-int"; do
    [[ $((SECONDS - start)) -lt 120 ]] || die "bisect did not reach step 1 in 120s"
    sleep 0.2
done
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
cat "$WORKDIR/err-int"
[[ $rc -ne 0 ]] || die "rewind bisect ended with 0 after SIGINT"
grep -q "interrupted" "$WORKDIR/err-int" || die "the error does not say interrupted"
no_views "SIGINT"

umount "$mnt"
del_dev "$dev"
say "bisect found the first bad safe point ($answer) in $steps steps and left no view"
