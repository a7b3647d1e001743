#!/bin/bash
# upgrade: `rewind upgrade -n ID` hands a live device to another rewind binary while fio
# writes with verification, UPGRADE_ROUNDS times in a row (default 10), alternating between
# two binaries (the installed one and a copy of it elsewhere): fio never sees an error,
# every round's verification passes, the daemon keeps its pid while the program it runs
# changes (/proc/PID/exe), and a final verify pass reads back every block. Prints the
# median pause (rewind upgrade's own figure: from the daemon's answer to the new program
# serving the device, the longest the device's I/O could wait).
#
# Then a binary that says it is rewind but cannot serve: the device waits, as after a crash,
# and `rewind recover` brings it back with every block. What must be refused, with the
# device serving on: an upgrade while a view is open, to something that is not a rewind
# binary, and of a device added with --on-crash stop. And a supervised device: the
# supervisor is restarted from the new binary.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

ROUNDS=${UPGRADE_ROUNDS:-10}
SIZE_MIB=${UPGRADE_SIZE_MIB:-64}
size=$((SIZE_MIB << 20))
img=$WORKDIR/disk.img

installed=$(readlink -f "$(type -P "$REWIND")")
other=$WORKDIR/rewind-other
cp "$installed" "$other"
chmod +x "$other"
other=$(readlink -f "$other")
# runs: the program pid $1 runs, resolved.
runs() { readlink -f "/proc/$1/exe"; }

pick_fio_engine
dev=$(add_dev "$img" --size 256M)
id=${dev#/dev/ublkb}
pid=$(daemon_pid "$id")
[[ -n $pid ]] || die "no daemon pid for $dev"
# Rate limited, so the upgrade one second in comes while fio still writes (16384 writes
# take over 3 s), and a fast machine cannot finish before it.
job=(--name=upgrade --filename="$dev" --ioengine="$FIO_ENGINE" --direct=1 --iodepth=16
    --rw=randwrite --bs=4k --size="${SIZE_MIB}M" --verify=crc32c --group_reporting
    --rate_iops=5000)

pauses=()
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then to=$other; else to=$installed; fi
    out=$STATE/fio-$r.out
    fio --eta=never --output-format=normal,terse "${job[@]}" --randseed="$r" >"$out" 2>&1 &
    fpid=$!
    sleep 1
    kill -0 "$fpid" 2>/dev/null || die "round $r: fio ended before the upgrade: $(cat "$out")"
    json=$(rewind upgrade -n "$id" --binary "$to" --json 2>&1) ||
        die "round $r: rewind upgrade -n $id --binary $to failed: $json"
    ms=$(sed -n 's/.*"pause_ms": *\([0-9]*\).*/\1/p' <<<"$json")
    [[ -n $ms ]] || die "round $r: no pause_ms in: $json"
    got=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' <<<"$json")
    [[ $got == "$pid" ]] || die "round $r: upgrade says pid $got, the daemon was $pid"
    [[ $(runs "$pid") == "$to" ]] || die "round $r: pid $pid runs $(runs "$pid"), not $to"
    [[ $(daemon_pid "$id") == "$pid" ]] || die "round $r: the pid file names $(daemon_pid "$id")"
    pauses+=("$ms")
    wait_fio_round "$fpid" "$out" "$size"
    say "round $r/$ROUNDS: pid $pid now runs $to; I/O paused ${ms} ms; fio wrote and verified" \
        "$SIZE_MIB MiB with no error"
done

no_kernel_io_errors
say "final verify pass of the last round's blocks"
run_fio "${job[@]}" --randseed="$ROUNDS" --verify_only
fio_expect read "$size"

say "a binary that says it is rewind but cannot serve: the device waits for rewind recover"
fake=$WORKDIR/rewind-fake
printf '#!/bin/sh\n[ "$1" = --version ] && { echo "rewind 9.9.9"; exit 0; }\necho "rewind-fake: cannot serve" >&2\nexit 1\n' >"$fake"
chmod +x "$fake"
out=$(rewind upgrade -n "$id" --binary "$fake" 2>&1) && die "an upgrade to $fake succeeded: $out"
grep -q "rewind recover -n $id" <<<"$out" || die "a failed takeover did not point to rewind recover: $out"
say "refused, a failed takeover: $out"
wait_exited "$pid"
out=$(rewind recover -n "$id" 2>&1) || die "rewind recover -n $id after the failed takeover: $out"
pid=$(daemon_pid "$id")
to=$installed
run_fio "${job[@]}" --randseed="$ROUNDS" --verify_only
fio_expect read "$size"

# refused: each leaves the device served by the same program, which the last line checks.
refused() {
    local what=$1 want=$2 out
    shift 2
    out=$(rewind upgrade -n "$id" "$@" 2>&1) && die "an upgrade $what was not refused: $out"
    grep -q -- "$want" <<<"$out" || die "an upgrade $what was refused without saying '$want': $out"
    say "refused, $what: $out"
}
rewind safepoint -n "$id" --label before-view >/dev/null
view=$(rewind view -n "$id" --at before-view 2>/dev/null | tail -n 1)
[[ $view =~ ^/dev/ublkb[0-9]+$ ]] || die "rewind view printed '$view'"
echo "${view#/dev/ublkb}" >>"$STATE/ublk"
refused "with a view open" "views of this device are open"
del_dev "$view"
refused "to /bin/true" "not a rewind binary" --binary /bin/true
dd if="$dev" of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null || die "$dev does not read after the refusals"
[[ $(runs "$pid") == "$to" ]] || die "a refused upgrade changed the program of pid $pid"
del_dev "$dev"
"$REWIND" check "$img" >/dev/null || die "rewind check $img failed after the upgrades"

stop_img=$WORKDIR/stop.img
sdev=$(add_dev "$stop_img" --size 64M --on-crash stop)
id=${sdev#/dev/ublkb}
refused "of an --on-crash stop device" "on-crash stop"
del_dev "$sdev"

sup_img=$WORKDIR/supervised.img
vdev=$(add_dev "$sup_img" --size 64M --supervise)
id=${vdev#/dev/ublkb}
sup=$(cat "/run/rewind/ublkb$id.supervisor.pid" 2>/dev/null || true)
[[ -n $sup ]] && alive "$sup" || die "no supervisor for $vdev"
json=$(rewind upgrade -n "$id" --binary "$other" --json 2>&1) || die "upgrading $vdev failed: $json"
new_sup=$(sed -n 's/.*"supervisor": *\([0-9]*\).*/\1/p' <<<"$json")
[[ -n $new_sup && $new_sup != "$sup" ]] || die "no new supervisor after the upgrade: $json"
alive "$new_sup" || die "the new supervisor $new_sup is not running"
alive "$sup" && die "the old supervisor $sup still runs"
[[ $(runs "$new_sup") == "$other" ]] || die "the new supervisor runs $(runs "$new_sup"), not $other"
say "supervised $vdev: supervisor $sup replaced by $new_sup, running $other"
dd if=/dev/zero of="$vdev" bs=4k count=16 oflag=direct 2>/dev/null || die "$vdev does not write after the upgrade"
del_dev "$vdev"

say "pauses (ms, the daemon's answer to the new program serving): ${pauses[*]}"
say "UPGRADE median ${ROUNDS} rounds: $(median "${pauses[@]}") ms (min $(printf '%s\n' "${pauses[@]}" | sort -n | head -n 1), max $(printf '%s\n' "${pauses[@]}" | sort -n | tail -n 1))"
say "$ROUNDS upgrades under fio: no I/O error, no mismatch"
