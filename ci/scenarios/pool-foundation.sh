#!/bin/bash
# pool-foundation: the foundation scenarios again, each device a pool of three files (the
# image and two backings, `rewind create --backing`; see add_dev in lib.sh). The data area
# is shared evenly between the backings, so the boundary between them falls inside the
# device's own pages, and the scenarios' I/O crosses it.
#
# Each runs as it does on its own, with its own checks: fio-verify (every block verified,
# across a restart), ext4-files (files and checksums across a restart), mixed-bs (block
# sizes and queue counts), discard and recover-ext4 (kill -9 under ext4, then recover).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

export REWIND_POOL=2
for s in fio-verify ext4-files mixed-bs discard recover-ext4; do
    say "---------- $s, on a pool of three files ----------"
    start=$SECONDS
    bash "$(dirname "$0")/$s.sh" || die "$s failed on a pool (rc=$?)"
    say "$s passed on a pool in $((SECONDS - start))s"
done
say "the foundation scenarios pass with every device a pool of three files"
