#!/bin/bash
# The README's main job, on a fresh Debian machine: install what is missing, build
# rewind, and serve an 8 GiB (sparse) image as /dev/ublkbN, with ext4 on
# it (ci/scenarios/demo.sh). Where the kernel has no ublk_drv this runs in the qemu guest.
set -euo pipefail
CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$CI_DIR/.."
"$CI_DIR/setup.sh"
for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
    if ! command -v cargo >/dev/null && [[ -x $d/cargo ]]; then PATH=$d:$PATH; fi
done
cargo build --release
exec "$CI_DIR/guest.sh" --bin "${CARGO_TARGET_DIR:-$PWD/target}/release/rewind" demo
