#!/usr/bin/env bash
# sprout's main job, end to end on this machine: build, make a busybox
# bundle, start the same container with sprout and with runc, and print
# the start times side by side. Needs root, busybox-static and (for the
# comparison) runc.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-20}
echo "building (release)..." >&2
cargo build --release --quiet --bin sprout --bin sprout-init
sprout=$PWD/target/release/sprout

work=$(mktemp -d /tmp/sprout-demo.XXXXXX)
cleanup() {
    "$sprout" --root "$work/sprout-state" delete --force demo >/dev/null 2>&1 || true
    command -v runc >/dev/null && runc --root "$work/runc-state" delete --force demo >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

bundle=$work/bundle
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/dev" "$bundle/rootfs/sys" "$bundle/rootfs/tmp"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$bundle/rootfs/bin/$a"
done
(cd "$bundle" && "$sprout" spec)
python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", "echo hello from $(hostname), pid $$"]
c["linux"]["cgroupsPath"] = "sprout-demo"
json.dump(c, open(p, "w"), indent=2)
PY

echo "== one container, with sprout:"
"$sprout" --root "$work/sprout-state" run --bundle "$bundle" demo

time_runs() { # runtime-binary state-dir
    local start end
    start=$(date +%s%N)
    for _ in $(seq "$runs"); do
        "$1" --root "$2" run --bundle "$bundle" demo >/dev/null
    done
    end=$(date +%s%N)
    echo $(( (end - start) / runs / 1000 ))
}

echo "== cold start (create + start + wait + delete via 'run'), mean of $runs:"
s=$(time_runs "$sprout" "$work/sprout-state")
printf '   sprout %6d µs\n' "$s"
if command -v runc >/dev/null; then
    r=$(time_runs runc "$work/runc-state")
    printf '   runc   %6d µs\n' "$r"
    python3 -c "print('   sprout/runc = %.2f' % ($s / $r))"
else
    echo "   (runc not installed: apt-get install runc to compare)"
fi
