#!/bin/bash
# mirror: a replica kept safe point by safe point survives kills at any moment.
#
# ext4 on the device, and two writers on it: fio, a steady load of 4 KiB random writes with
# an fsync every 16 (at most 400 writes a second), and a shell loop making and deleting files
# with a sync twice a second (and an fstrim now and then, so steps carry zeros too). Each
# fsync and sync is a flush, so a safe point. `rewind mirror` into a raw image file runs in
# the background and is killed with SIGKILL at random moments, five times; after each kill
# its state file says which safe
# point the replica holds, or that a step was under way, in which case `rewind mirror --once`
# finishes it; then the replica must equal the view of that safe point byte for byte. While
# it runs, `rewind stats` shows its lag (printed: the median over the run). Then a large step
# is written and the mirror killed while its state says the step is being applied, which
# --once must finish; some steps must have been incremental. At the end the
# writer stops, the filesystem is frozen and a labelled safe point made; the mirror catches
# up to it, equals its view, and e2fsck finds the replica clean. A second replica on a block
# device (another rewind device, full of 0xff first) made with --once equals the view too,
# and since that device is a rewind device the step is a safe point on it labelled
# mirror-<id>; killed while a large step is applied to it, the device's newest mirror- safe
# point still equals the source's safe point of that id, byte for byte. Then the replica's
# own daemon is killed, and `rewind add --read-only --at mirror-<id>` of its image serves
# that safe point, read only, equal to the source's.
# Last, a replica on an NBD device that qemu-nbd serves from a file over the loopback: the
# mirror is killed while it applies its first (full) step, `--once` finishes it, and the
# replica equals the view of its safe point and is a clean ext4.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORKDIR/disk.img
mnt=$WORKDIR/mnt
replica=$WORKDIR/replica.img
state=$WORKDIR/replica.img.mirror.json
mkdir -p "$mnt"
pick_fio_engine
dev=$(add_dev "$img" --size 256M --history 256M)
id=${dev#/dev/ublkb}
mkfs.ext4 -q -F "$dev" || die "mkfs.ext4 failed"
mount -t ext4 "$dev" "$mnt" || die "mount failed"

# The writer: a round of files every half second, the round before it deleted.
(
    n=0
    while [[ ! -e $WORKDIR/stop ]]; do
        n=$((n + 1))
        mkdir -p "$mnt/w$n"
        for i in 1 2 3 4; do
            dd if=/dev/urandom of="$mnt/w$n/f$i" bs=4k count=$((n % 7 * 16 + 16)) 2>/dev/null
        done
        rm -rf "$mnt/w$((n - 1))"
        # Trimmed blocks read as zeros: incremental steps carry zero extents too.
        [[ $((n % 5)) -eq 0 ]] && { fstrim "$mnt" 2>/dev/null || true; }
        sync
        sleep 0.5
    done
) &
writer=$!
echo "$writer" >>"$STATE/pids"
fio --name=load --directory="$mnt" --ioengine="$FIO_ENGINE" --direct=1 --rw=randwrite --bs=4k \
    --size=32M --nrfiles=2 --fsync=16 --rate_iops=400 --time_based --runtime=3600 \
    --output="$STATE/fio-load.out" >/dev/null 2>&1 &
fio_load=$!
echo "$fio_load" >>"$STATE/pids"

# The binary itself (`command`), not the rewind() wrapper: $! must be the mirror, for kill -9.
start_mirror() {
    command "$REWIND" mirror -n "$id" --to "$replica" --interval 1 --json >>"$WORKDIR/mirror.out" 2>&1 &
    mirror=$!
    echo "$mirror" >>"$STATE/pids"
}

# finish_if_applying WHAT: after a kill, a step under way is finished by --once.
finish_if_applying() {
    if grep -q '"to"' "$state"; then
        say "$1: a step was under way ($(state_field applying)); --once finishes it"
        rewind mirror -n "$id" --to "$replica" --state "$state" --once | sed 's/^/    /' ||
            die "mirror --once after $1"
        ! grep -q '"to"' "$state" || die "the step is still under way: $(cat "$state")"
        return 0
    fi
    say "$1: between steps, at safe point $(state_field at)"
}

# kill_when_applying WHAT: kills the mirror ($mirror) as soon as its state ($state) says a
# step is being applied (within 60 s, else the scenario fails, naming WHAT).
kill_when_applying() {
    local start=$SECONDS
    until grep -q '"to"' "$state" 2>/dev/null; do
        [[ $((SECONDS - start)) -lt 60 ]] || die "the mirror onto $1 began no apply in 60 s"
        sleep 0.05
    done
    kill -9 "$mirror"
    wait "$mirror" 2>/dev/null || true
}

# state_field NAME: a field of the mirror's state file (null when absent).
state_field() {
    tr -d ' \n' <"$state" | grep -o "\"$1\":[^,}]*" | head -n 1 | cut -d: -f2-
}

# expect_replica_is_view: the replica equals the view of the safe point its state names.
expect_replica_is_view() {
    local at view
    at=$(state_field at)
    [[ $at =~ ^[0-9]+$ ]] || die "the mirror's state names no safe point: $(cat "$state")"
    view=$(rewind view -n "$id" --at "$at" | tail -n 1)
    [[ $view =~ ^/dev/ublkb[0-9]+$ ]] || die "rewind view --at $at printed '$view'"
    echo "${view#/dev/ublkb}" >>"$STATE/ublk"
    wait_for_dev "$view"
    if ! cmp "$replica" "$view" >"$STATE/cmp" 2>&1; then
        cat "$STATE/cmp" "$state"
        cmp -l "$replica" "$view" 2>/dev/null | awk '{ print int(($1 - 1) / 4096) }' | uniq -c | head -n 20
        die "the replica differs from the view of safe point $at"
    fi
    rewind del -n "${view#/dev/ublkb}" >/dev/null || die "closing the view of $at"
    say "replica equals the view of safe point $at"
}

# sample_lag: one sample of the running mirror's lag, as `rewind stats` shows it, into
# lags and lag_mss.
lags=()
lag_mss=()
sample_lag() {
    local stats lag lag_ms
    stats=$(rewind stats -n "$id" --json | tr -d ' \n')
    lag=$(grep -o '"lag_safe_points":[0-9]*' <<<"$stats" | cut -d: -f2 || true)
    lag_ms=$(grep -o '"lag_ms":[0-9]*' <<<"$stats" | cut -d: -f2 || true)
    if [[ -n $lag ]]; then
        lags+=("$lag")
        lag_mss+=("$lag_ms")
    fi
}

# The steady lag: 20 samples a second apart, the mirror left alone under the load.
start_mirror
sleep 3
for _ in $(seq 20); do
    sleep 1
    sample_lag
done
[[ ${#lags[@]} -gt 0 ]] || die "rewind stats never showed the mirror's lag"
say "STEADY mirror lag under fio (up to 400 writes/s, an fsync every 16) and the file writer: median $(median "${lags[@]}") safe points and $(median "${lag_mss[@]}") ms, max $(printf '%s\n' "${lag_mss[@]}" | sort -n | tail -n 1) ms (${#lags[@]} samples: ${lags[*]} safe points; ${lag_mss[*]} ms)"
lags=()
lag_mss=()
for k in 1 2 3 4 5; do
    for _ in 1 2 3; do
        sleep 1
        sample_lag
    done
    # A random moment within the next two seconds.
    sleep "0.$((RANDOM % 10))"
    sleep "$((RANDOM % 2))"
    kill -9 "$mirror"
    wait "$mirror" 2>/dev/null || true
    finish_if_applying "kill $k"
    expect_replica_is_view
    start_mirror
done

# A kill in the middle of applying a step, for certain: a large step (48 MiB written at
# once), and the mirror killed as soon as its state says the step is being applied.
caught=0
for try in 1 2 3; do
    dd if=/dev/urandom of="$mnt/big$try" bs=1M count=48 2>/dev/null
    sync
    start=$SECONDS
    until grep -q '"to"' "$state" 2>/dev/null; do
        [[ $((SECONDS - start)) -lt 60 ]] || break
        sleep 0.05
    done
    if grep -q '"to"' "$state" 2>/dev/null; then
        kill -9 "$mirror"
        wait "$mirror" 2>/dev/null || true
        if grep -q '"to"' "$state"; then
            caught=$((caught + 1))
            finish_if_applying "kill during an apply (try $try)"
            expect_replica_is_view
            start_mirror
            break
        fi
        start_mirror
    fi
    rm -f "$mnt/big$try"
done
[[ $caught -eq 1 ]] || die "no kill landed while a step was being applied, in 3 tries"
grep -q '"full":false' "$WORKDIR/mirror.out" || die "no incremental step: $(tail -n 5 "$WORKDIR/mirror.out")"
say "steps: $(grep -c '"full":false' "$WORKDIR/mirror.out") incremental, $(grep -c '"full":true' "$WORKDIR/mirror.out") full"

[[ ${#lags[@]} -gt 0 ]] || die "rewind stats never showed the mirror's lag"
say "mirror lag during the kill rounds (each restart catches up what passed while the replica was compared): median $(median "${lags[@]}") safe points and $(median "${lag_mss[@]}") ms (${#lags[@]} samples: ${lags[*]} safe points; ${lag_mss[*]} ms)"

# Quiet, frozen, labelled: the mirror reaches it and the replica is a clean filesystem.
touch "$WORKDIR/stop"
wait "$writer"
kill "$fio_load"
wait "$fio_load" || true
if grep -Eq "$FIO_ERRORS" "$STATE/fio-load.out"; then
    die "the fio load saw errors: $(grep -Em 5 "$FIO_ERRORS" "$STATE/fio-load.out")"
fi
say "fio load: $(grep -m 1 -o 'IOPS=[^,]*' "$STATE/fio-load.out" || echo '?') over the run, no error"
fsfreeze --freeze "$mnt" || die "fsfreeze --freeze"
rewind safepoint -n "$id" --label final >/dev/null || die "safepoint final"
fsfreeze --unfreeze "$mnt" || die "fsfreeze --unfreeze"
final=$(rewind log -n "$id" --json | tr -d ' \n' | grep -o '"id":[0-9]*,[^}]*"label":"final"' | cut -d, -f1 | cut -d: -f2)
[[ $final =~ ^[0-9]+$ ]] || die "no safe point labelled final in the log"
start=$SECONDS
# (Safe points may follow it: the thaw, an idle one. The mirror goes to the newest.)
until at=$(state_field at) && [[ $at =~ ^[0-9]+$ && $at -ge $final ]] && ! grep -q '"to"' "$state"; do
    [[ $((SECONDS - start)) -lt 60 ]] || die "the mirror did not reach safe point $final in 60 s: $(cat "$state")"
    sleep 0.5
done
kill "$mirror"
wait "$mirror" 2>/dev/null || true
# It may have begun a step for a later safe point (an idle one) meanwhile.
finish_if_applying "the last stop"
expect_replica_is_view
e2fsck -fn "$replica" >"$STATE/fsck" 2>&1 || {
    cat "$STATE/fsck"
    die "e2fsck of the replica is not clean"
}
say "e2fsck of the replica at safe point $(state_field at) (the frozen one: $final): clean"
sed 's/^/    mirror: /' "$WORKDIR/mirror.out" | tail -n 4

# A block device replica, made in one step.
# --on-crash stop: its own daemon is killed below, and the device goes with it.
target=$(add_dev "$WORKDIR/target.img" --size 256M --history 256M --sparse --on-crash stop)
run_fio --name=fill --filename="$target" --ioengine="$FIO_ENGINE" --direct=1 --rw=write --bs=1M \
    --size=256M --buffer_pattern=0xff
replica=$target
state=$WORKDIR/device.mirror.json
rewind mirror -n "$id" --to "$target" --state "$state" --once | sed 's/^/    /' ||
    die "mirror --once onto $target"
expect_replica_is_view
tid=${target#/dev/ublkb}
# mirror_marks: the source safe points the replica device has labelled safe points for.
mirror_marks() {
    rewind log -n "$tid" --json | tr -d ' \n' | grep -o '"label":"mirror-[0-9]*"' | grep -o '[0-9]*' || true
}
[[ $(mirror_marks | tail -n 1) == "$(state_field at)" ]] ||
    die "the replica device has no safe point labelled mirror-$(state_field at): $(mirror_marks)"
say "the replica device (itself a rewind device) marked the step: safe point mirror-$(state_field at)"

# Killed while it applies a large step to the replica device: the device holds a mix, but
# its newest mirror- safe point is a whole step (the previous one, or this one if the kill
# came after its mark and before the state moved on). Up to three tries at a kill that lands
# while the state says a step is being applied.
for try in 1 2 3; do
    dd if=/dev/urandom of="$mnt/late$try" bs=1M count=48 2>/dev/null
    sync
    command "$REWIND" mirror -n "$id" --to "$target" --state "$state" --interval 1 >"$WORKDIR/dev.out" 2>&1 &
    mirror=$!
    echo "$mirror" >>"$STATE/pids"
    kill_when_applying "$target"
    grep -q '"to"' "$state" && break
    [[ $try -lt 3 ]] || die "no kill landed while a step was applied to $target, in 3 tries"
done
mark=$(mirror_marks | tail -n 1)
say "killed during a step to the replica device ($(state_field applying)); its newest mark: mirror-$mark"
tview=$(rewind view -n "$tid" --at "mirror-$mark" | tail -n 1)
echo "${tview#/dev/ublkb}" >>"$STATE/ublk"
sview=$(rewind view -n "$id" --at "$mark" | tail -n 1)
echo "${sview#/dev/ublkb}" >>"$STATE/ublk"
wait_for_dev "$tview"
wait_for_dev "$sview"
cmp "$tview" "$sview" || die "the replica's safe point mirror-$mark differs from the source's $mark"
rewind del -n "${tview#/dev/ublkb}" >/dev/null && rewind del -n "${sview#/dev/ublkb}" >/dev/null ||
    die "closing the views"
say "the replica device's safe point mirror-$mark equals the source's safe point $mark"
finish_if_applying "the kill onto the replica device"
expect_replica_is_view
[[ $(mirror_marks | tail -n 1) == "$(state_field at)" ]] || die "the finished step is not marked"

# The replica's own daemon killed: its image, opened read-only (the journal replayed in
# memory only), serves the last mark, which equals the source's safe point.
mark=$(state_field at)
tpid=$(daemon_pid "$tid")
[[ -n $tpid ]] || die "no daemon pid for $target"
kill -9 "$tpid"
wait_exited "$tpid"
del_dev "$target"
ro=$(add_dev "$WORKDIR/target.img" --read-only --at "mirror-$mark")
roid=${ro#/dev/ublkb}
[[ $(blockdev --getro "$ro") == 1 ]] || die "$ro (rewind add --read-only) is writable"
rewind list | grep -q "read only at safe point" || die "rewind list does not say $ro is read-only"
if out=$(rewind safepoint -n "$roid" 2>&1); then die "a safe point was made on $ro: $out"; fi
grep -q "read-only" <<<"$out" || die "rewind safepoint on $ro: $out"
sview=$(rewind view -n "$id" --at "$mark" | tail -n 1)
echo "${sview#/dev/ublkb}" >>"$STATE/ublk"
wait_for_dev "$sview"
cmp "$ro" "$sview" || die "the killed replica's mirror-$mark, served read-only, differs from $mark"
rewind del -n "${sview#/dev/ublkb}" >/dev/null || die "closing the view of $mark"
del_dev "$ro"
say "the replica's daemon killed: rewind add --read-only --at mirror-$mark serves it, equal to the source's $mark"
# The file system clean again for the last replica, as at "final".
rm -f "$mnt"/late*
fsfreeze --freeze "$mnt" || die "fsfreeze --freeze"
rewind safepoint -n "$id" --label final2 >/dev/null || die "safepoint final2"
fsfreeze --unfreeze "$mnt" || die "fsfreeze --unfreeze"

say "a replica on an NBD device: qemu-nbd serving a file over the loopback"
command -v qemu-nbd >/dev/null || die "no qemu-nbd in the guest (ci/setup.sh installs qemu-utils)"
load_module nbd
nbd=/dev/nbd0
truncate -s 256M "$WORKDIR/nbd.img"
mkdir -p /var/lock # where qemu-nbd keeps its socket
qemu-nbd --connect="$nbd" --format=raw "$WORKDIR/nbd.img" || die "qemu-nbd --connect $nbd failed"
echo "$nbd" >>"$STATE/nbd"
wait_for_dev "$nbd"
replica=$nbd
state=$WORKDIR/nbd.mirror.json
command "$REWIND" mirror -n "$id" --to "$nbd" --state "$state" --interval 1 >"$WORKDIR/nbd.out" 2>&1 &
mirror=$!
echo "$mirror" >>"$STATE/pids"
# Killed as soon as its first step (the whole device) is being applied to the NBD device.
kill_when_applying "$nbd"
say "killed the NBD mirror; its state: $(cat "$state" 2>/dev/null || echo none yet)"
rewind mirror -n "$id" --to "$nbd" --state "$state" --once | sed 's/^/    /' ||
    die "mirror --once onto $nbd"
expect_replica_is_view
e2fsck -fn "$nbd" >"$STATE/fsck" 2>&1 || {
    cat "$STATE/fsck"
    die "e2fsck of the NBD replica is not clean"
}
say "e2fsck of the NBD replica at safe point $(state_field at): clean"
qemu-nbd --disconnect "$nbd" >/dev/null || die "qemu-nbd --disconnect $nbd failed"
: >"$STATE/nbd"

umount "$mnt"
del_dev "$dev"
say "mirror: the replica was a safe point of the device after every kill"
