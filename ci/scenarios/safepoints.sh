#!/bin/bash
# safepoints: explicit, idle and flush safe points show in `rewind log`, from the daemon and
# offline from the image, with the same ids and labels.
#
# fio writes pattern A (with verify headers); `rewind safepoint --label before` marks it;
# `rewind log -n` (table and --json) must list it as a user safe point with that label. A
# second label goes through --json, a duplicate label is refused. Then more writes and a
# `sync`, after which an idle or flush safe point must follow. After `rewind del`, `rewind
# log IMAGE` must show the same window, and after serving the image again pattern A must
# still verify. In between, a run of fsyncs checks flush coalescing (far fewer flush safe
# points than fsyncs, the last fsync's state a flush safe point) and that the history the
# overwrites made adds up: the HELD column sums to the history in use.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

SIZE_MIB=${SAFEPOINTS_SIZE_MIB:-256}
A_MIB=64
img=$WORKDIR/disk.img

pick_fio_engine
dev=$(add_dev "$img" --size "${SIZE_MIB}M")
id=${dev#/dev/ublkb}

# refused WHAT PATTERN CMD...: CMD must fail with PATTERN in its error output.
refused() {
    local what=$1 pattern=$2 rc=0 err
    shift 2
    err=$("$@" 2>&1 >/dev/null) || rc=$?
    say "  $what: rc=$rc: $(head -n 1 <<<"$err")"
    [[ $rc -ne 0 ]] || die "$what: '$*' succeeded, expected a refusal"
    grep -q -- "$pattern" <<<"$err" || die "$what: the error does not say '$pattern': $err"
}

# rows LOG: the table rows of `rewind log` output as "ID TRIGGER LABEL", one per line.
# TIME is two fields, so TRIGGER is field 4 and LABEL field 5 (the labels here have no
# spaces).
rows() { awk '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9][0-9][0-9][0-9]-/ {print $1, $4, $5}' <<<"$1"; }

job_a=(--name=pattern-a --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16
    --rw=randwrite --bs=4k --size="${A_MIB}M" --verify=crc32c --randrepeat=1 --group_reporting)
say "pattern A: ${A_MIB} MiB of random 4 KiB writes with verify headers"
run_fio "${job_a[@]}" --do_verify=0
fio_expect write $((A_MIB << 20))

say "rewind safepoint --label before"
out=$(rewind safepoint -n "$id" --label before) || die "rewind safepoint failed"
say "  $out"
re='^safe point ([0-9]+) at [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}, label "before"$'
[[ $out =~ $re ]] || die "rewind safepoint printed '$out'"
before=${BASH_REMATCH[1]}

log=$(rewind log -n "$id") || die "rewind log -n $id failed"
printf '%s\n' "$log"
[[ $(head -n 1 <<<"$log") =~ ^ID\ +TIME\ +TRIGGER\ +LABEL\ +CHANGED\ +HELD$ ]] ||
    die "unexpected header: $(head -n 1 <<<"$log")"
row=$(rows "$log" | awk -v id="$before" '$1 == id')
[[ $row == "$before user before" ]] || die "safe point $before: row is '$row', expected '$before user before'"
[[ $(tail -n 1 <<<"$log") =~ ^[0-9]+\ safe\ points?\ since\ .*history\ .*used\ of ]] ||
    die "unexpected footer: $(tail -n 1 <<<"$log")"
# Pattern A was written in the epoch the safe point closed (after the format).
rows "$log" | awk -v id="$before" '$1 < id' | grep -q . || die "no safe point older than $before"

say "rewind log -n $id --json"
json=$(rewind log -n "$id" --json | tr -d ' \n') || die "rewind log --json failed"
[[ $json == \[*\] ]] || die "--json is not an array: ${json:0:200}"
obj='\{"id":[0-9]+,"time":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+([+-][0-9]{2}:[0-9]{2}|Z)","time_ns":[0-9]+,"trigger":"[a-z]+","label":(null|"[^"]*"),"changed_bytes":(null|[0-9]+),"held_bytes":[0-9]+,"pinned":(true|false),"views":\[[0-9,]*\]\}'
[[ $json =~ ^\[$obj(,$obj)*\]$ ]] || die "--json does not have the expected shape: ${json:0:400}"
grep -Eq "\{\"id\":$before,[^}]*\"trigger\":\"user\",\"label\":\"before\"," <<<"$json" ||
    die "--json has no user safe point $before labelled before: ${json:0:400}"
n_table=$(rows "$log" | wc -l)
n_json=$(grep -o '"id":' <<<"$json" | wc -l)
[[ $n_table -eq $n_json ]] || die "the table has $n_table safe points, --json $n_json"

say "rewind safepoint --label second --json"
sp=$(rewind safepoint -n "$id" --label second --json | tr -d ' \n') || die "rewind safepoint --json failed"
say "  $sp"
[[ $sp =~ ^$obj$ ]] || die "safepoint --json does not have the expected shape: $sp"
[[ $sp =~ \"trigger\":\"user\",\"label\":\"second\" ]] || die "safepoint --json: not user/second: $sp"
second=$(sed -E 's/^\{"id":([0-9]+),.*/\1/' <<<"$sp")
[[ $second -gt $before ]] || die "safe point ids must grow: $before, then $second"

say "refusals: a duplicate label, a label too long, a device that is not there"
refused "duplicate label" "already used by safe point $before" rewind safepoint -n "$id" --label before
err=$(rewind safepoint -n "$id" --label before 2>&1 >/dev/null) || true
[[ $(grep -c . <<<"$err") -eq 1 ]] || die "the refusal is not one line: $err"
refused "65-byte label" "65 bytes" rewind safepoint -n "$id" --label "$(printf 'x%.0s' {1..65})"
refused "missing device" "no ublk device 999" rewind safepoint -n 999
refused "log of a served image" "rewind log -n $id" rewind log "$img"

say "more writes, then sync: an idle or flush safe point must follow"
last=$(rows "$(rewind log -n "$id")" | tail -n 1 | cut -d' ' -f1)
run_fio --name=more --filename="$dev" --ioengine=psync --direct=0 --rw=write --bs=64k \
    --offset=$((128 << 20)) --size=8M
sync
sleep 3
deadline=$((SECONDS + 20))
while :; do
    log=$(rewind log -n "$id")
    new=$(rows "$log" | awk -v last="$last" '$1 > last && ($2 == "idle" || $2 == "flush")')
    [[ -z $new ]] || break
    [[ $SECONDS -lt $deadline ]] || {
        printf '%s\n' "$log"
        die "no idle or flush safe point after $last within 23 s of the sync"
    }
    sleep 1
done
printf '%s\n' "$log"
say "new safe point(s) after $last: $(tr '\n' ';' <<<"$new")"

# fio syncs before each write but the first, and with --end_fsync after the last.
say "overwrite those 8 MiB with an fsync after every 16 KiB write: flushes coalesce"
last=$(rows "$log" | tail -n 1 | cut -d' ' -f1)
fsyncs=$(((8 << 20) / 16384))
start=$SECONDS
run_fio --name=fsyncs --filename="$dev" --ioengine=psync --direct=1 --rw=write --bs=16k \
    --offset=$((128 << 20)) --size=8M --fsync=1 --end_fsync=1
took=$((SECONDS - start + 1))
sleep 3
log=$(rewind log -n "$id")
printf '%s\n' "$log"
new=$(rows "$log" | awk -v last="$last" '$1 > last')
flushes=$(awk '$2 == "flush"' <<<"$new" | wc -l)
say "$fsyncs fsyncs in about ${took}s made $flushes flush safe point(s)"
[[ $flushes -ge 1 ]] || die "no flush safe point for $fsyncs fsyncs"
# At most one per 100 ms, plus the trailing one; far fewer than one per fsync.
[[ $flushes -le $((took * 10 + 2)) ]] || die "$flushes flush safe points in ${took}s: not coalesced"
[[ $flushes -lt $((fsyncs / 4)) ]] || die "$flushes flush safe points for $fsyncs fsyncs: not coalesced"
newest=$(tail -n 1 <<<"$new")
[[ $newest == *" flush -" ]] ||
    die "the newest safe point is '$newest': the last fsync's state should be a flush safe point, with no idle one after it"

json=$(rewind log -n "$id" --json | tr -d ' \n')
held=$(grep -Eo '"held_bytes":[0-9]+' <<<"$json" | cut -d: -f2 | awk '{s += $1} END {print s + 0}')
used=$(rewind stats -n "$id" --json | tr -d ' \n' | sed -E 's/.*"history_pages":([0-9]+).*/\1/')
say "HELD sums to $held bytes; history in use: $((used * 4096)) bytes"
[[ $held -eq $((used * 4096)) ]] || die "HELD sums to $held bytes, the history in use is $((used * 4096))"
[[ $held -eq $((8 << 20)) ]] || die "overwriting 8 MiB once should hold 8 MiB of history, not $held bytes"

rewind stats -n "$id" | tee "$WORKDIR/stats"
grep -Eq '^window +[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]+ to [0-9]{4}-' "$WORKDIR/stats" ||
    die "rewind stats shows no window line"
grep -Eq '^idle +a safe point after 2 s without writes' "$WORKDIR/stats" || die "rewind stats: idle not 2 s"
rewind stats -n "$id" --json | tr -d ' \n' | grep -q '"oldest_safe_point_time_ns":[0-9]' ||
    die "rewind stats --json has no oldest_safe_point_time_ns"

# Settle: the last write was seconds ago, so nothing should change the window now; take
# the log again right before del and make sure it is stable.
sleep 1
online=$(rewind log -n "$id")
del_dev "$dev"

say "rewind log $img (offline)"
offline=$(rewind log "$img") || die "rewind log $img failed"
printf '%s\n' "$offline"
if [[ $online != "$offline" ]]; then
    diff <(printf '%s\n' "$online") <(printf '%s\n' "$offline") || true
    die "the offline log differs from the daemon's"
fi
rows "$offline" | grep -qx "$before user before" || die "offline: no '$before user before'"
rows "$offline" | grep -qx "$second user second" || die "offline: no '$second user second'"
offline_json=$(rewind log "$img" --json | tr -d ' \n')
[[ $offline_json =~ ^\[$obj(,$obj)*\]$ ]] || die "offline --json has an unexpected shape"

say "serving the image again: pattern A must still verify"
dev=$(add_dev "$img")
job_a[1]=--filename=$dev
run_fio "${job_a[@]}" --verify_only
fio_expect read $((A_MIB << 20))
del_dev "$dev"
say "safe points: user (labelled), idle/flush, duplicate refused, offline log identical"
