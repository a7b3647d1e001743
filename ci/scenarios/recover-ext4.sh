#!/bin/bash
# recover-ext4: ext4 mounted on rewind, a loop writing files and fsyncing each one, and the
# daemon killed with `kill -9` and recovered RECOVER_EXT4_ROUNDS times (default 20). The
# writer never sees an error; after each recovery the page cache is dropped and every file
# the writer had fsynced reads back with the checksum it recorded; e2fsck -fn is clean at
# the end.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

ROUNDS=${RECOVER_EXT4_ROUNDS:-20}
img=$WORKDIR/disk.img
mnt=$WORKDIR/mnt
mkdir -p "$mnt"
dev=$(add_dev "$img" --size 256M)
id=${dev#/dev/ublkb}
mkfs.ext4 -q -F "$dev" || die "mkfs.ext4 failed"
mount -t ext4 "$dev" "$mnt" || die "mount failed"

# The writer: file i gets 1 KiB to 68 KiB of random bytes, fsynced (dd conv=fsync); only once
# dd returned is its checksum recorded, so the list holds only what the writer knows durable.
fsynced=$STATE/fsynced
: >"$fsynced"
writer() {
    local i=0 n
    while [[ ! -e $STATE/stop ]]; do
        i=$((i + 1))
        n=$(((RANDOM % 64 + 1) * 1024 + RANDOM % 4096))
        head -c "$n" /dev/urandom >"$STATE/src"
        if ! dd if="$STATE/src" of="$mnt/f$i" bs=64k conv=fsync 2>"$STATE/dd.err"; then
            echo "writing f$i failed: $(cat "$STATE/dd.err")" >"$STATE/writer.err"
            return 1
        fi
        echo "$(sha256sum <"$STATE/src" | cut -d' ' -f1)  f$i" >>"$fsynced"
    done
}
writer &
wpid=$!

check_files() {
    local what=$1 n
    cp "$fsynced" "$STATE/check.list"
    n=$(wc -l <"$STATE/check.list")
    sync
    echo 3 >/proc/sys/vm/drop_caches
    if ! (cd "$mnt" && sha256sum -c "$STATE/check.list") >"$STATE/check.out" 2>&1; then
        grep -v ': OK$' "$STATE/check.out" | head -n 20
        die "$what: $(grep -vc ': OK$' "$STATE/check.out") of $n fsynced file(s) differ"
    fi
    echo "$n"
}

times=()
for ((r = 1; r <= ROUNDS; r++)); do
    sleep 1
    [[ ! -e $STATE/writer.err ]] || die "round $r: the writer failed: $(cat "$STATE/writer.err")"
    pid=$(daemon_pid "$id")
    kill -9 "$pid"
    t0=$(now_s)
    wait_exited "$pid"
    rewind recover -n "$id" >/dev/null || die "round $r: rewind recover -n $id failed"
    ms=$(ms_between "$t0" "$(now_s)")
    times+=("$ms")
    n=$(check_files "round $r")
    say "round $r/$ROUNDS: killed pid $pid, recovered in ${ms} ms; all $n fsynced files intact"
done
touch "$STATE/stop"
wait "$wpid" || die "the writer failed: $(cat "$STATE/writer.err" 2>/dev/null)"
n=$(check_files "at the end")
umount "$mnt"
e2fsck -fn "$dev" || die "e2fsck -fn $dev found problems after $ROUNDS recoveries"
no_kernel_io_errors
del_dev "$dev"
say "recovery times (ms, kill -9 to rewind recover returning): ${times[*]}; median $(median "${times[@]}") ms"
say "$ROUNDS recoveries under an fsyncing writer: $n files intact, e2fsck clean, no I/O error"
