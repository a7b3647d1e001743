#!/bin/bash
# recover-fio: `kill -9` of the daemon while fio writes with verification, then
# `rewind recover`, RECOVER_ROUNDS times in a row (default 20): fio never sees an error, every
# round's verification passes, and a final full verify pass reads back every block.
#
# Each round fio writes every 4 KiB block of a RECOVER_SIZE_MIB region once, in a random
# order of its own (--randseed=round), each block carrying its offset and a crc32c, and
# verifies them all once written. One second in, the daemon is killed with SIGKILL: the
# device is quiesced with fio's I/O waiting; a 4 KiB direct read started right after the kill
# waits too. The recovery time of a round is from the kill to that read completing, i.e.
# until I/O flows again; the median of the rounds is printed at the end.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

ROUNDS=${RECOVER_ROUNDS:-20}
SIZE_MIB=${RECOVER_SIZE_MIB:-64}
size=$((SIZE_MIB << 20))
img=$WORKDIR/disk.img

pick_fio_engine
dev=$(add_dev "$img" --size 256M)
id=${dev#/dev/ublkb}
rewind list
job=(--name=recover --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16
    --rw=randwrite --bs=4k --size="${SIZE_MIB}M" --verify=crc32c --group_reporting)

times=()
for ((r = 1; r <= ROUNDS; r++)); do
    out=$STATE/fio-$r.out
    fio --eta=never --output-format=normal,terse "${job[@]}" --randseed="$r" >"$out" 2>&1 &
    fpid=$!
    sleep 1
    pid=$(daemon_pid "$id")
    [[ -n $pid ]] || die "round $r: no daemon pid for $dev"
    kill -9 "$pid"
    t0=$(now_s)
    wait_exited "$pid"
    # Waits in the quiesced device, completes once the new daemon serves it.
    (dd if="$dev" of=/dev/null bs=4k count=1 skip=$((RANDOM % (size / 4096))) iflag=direct \
        2>"$STATE/probe.err" && now_s >"$STATE/probe.t") &
    probe=$!
    out_rec=$(rewind recover -n "$id" 2>&1) || die "round $r: rewind recover -n $id failed: $out_rec"
    t_rec=$(now_s)
    [[ $(tail -n 1 <<<"$out_rec") == "$dev" ]] || die "round $r: recover printed '$out_rec'"
    wait "$probe" || die "round $r: the read waiting during the recovery failed: $(cat "$STATE/probe.err")"
    ms=$(ms_between "$t0" "$(cat "$STATE/probe.t")")
    times+=("$ms")
    wait_fio_round "$fpid" "$out" "$size"
    [[ $(daemon_pid "$id") != "$pid" ]] || die "round $r: the pid file still names the killed daemon"
    say "round $r/$ROUNDS: killed pid $pid; I/O flowed again after ${ms} ms" \
        "(rewind recover returned after $(ms_between "$t0" "$t_rec") ms); fio wrote and verified" \
        "$((size >> 20)) MiB with no error"
done

no_kernel_io_errors

say "final verify pass of the last round's blocks"
run_fio "${job[@]}" --randseed="$ROUNDS" --verify_only
fio_expect read "$size"
del_dev "$dev"
"$REWIND" check "$img" >/dev/null || die "rewind check $img failed after the rounds"
say "recovery times (ms, kill -9 to I/O flowing again): ${times[*]}"
say "RECOVERY median ${ROUNDS} rounds: $(median "${times[@]}") ms (min $(median "$(printf '%s\n' "${times[@]}" | sort -n | head -n 1)"), max $(printf '%s\n' "${times[@]}" | sort -n | tail -n 1))"
say "$ROUNDS kills and recoveries under fio: no I/O error, no mismatch"
