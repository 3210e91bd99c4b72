#!/bin/sh
# Builds a static release berth-runtime and runs bench.py. On a host with
# hybrid cgroups, crun needs the unified hierarchy's cgroup.controllers
# hidden (else it picks cgroup v2 with no controllers): done in a private
# mount namespace so the host is untouched.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-runtime}
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p berth-runtime \
    --target x86_64-unknown-linux-gnu --manifest-path "$here/../../Cargo.toml"
export BERTH_RUNTIME="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/berth-runtime"
if [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
    exec unshare -m --propagation private sh -c \
        "mount --bind /dev/null /sys/fs/cgroup/unified/cgroup.controllers && python3 '$here/bench.py' $*"
fi
exec python3 "$here/bench.py" "$@"
