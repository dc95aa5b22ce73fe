#!/usr/bin/env bash
# sprout's main job, end to end on this machine: build; start a busybox
# container with sprout and with runc; then a small Python HTTP function
# (tests/programs/function.py): cold start with runc, restore of its
# initialized image with sprout, and an instance forked by sproutd from a
# template of that image, each timed to its first HTTP answer.
# Needs root, busybox-static, python3, iproute2 and (to compare) runc.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-20}
echo "building (release)..." >&2
cargo build --release --quiet -p sprout -p sprout-shim --bins
sprout=$PWD/target/release/sprout
sproutd=$PWD/target/release/sproutd

work=$(mktemp -d /tmp/sprout-demo.XXXXXX)
netns=sprout-demo-$$
sproutd_pid=
cleanup() {
    if [ -n "$sproutd_pid" ]; then
        kill "$sproutd_pid" 2>/dev/null || true
        wait "$sproutd_pid" 2>/dev/null || true
    fi
    for id in demo fn fn-img; do
        "$sprout" --root "$work/sprout-state" delete --force $id >/dev/null 2>&1 || true
        command -v runc >/dev/null && runc --root "$work/runc-state" delete --force $id >/dev/null 2>&1 || true
    done
    ip netns del "$netns" 2>/dev/null || true
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

# --- The Python function: cold start vs restore, to the first answer. ---
# One network namespace with lo up (what netplug's pools hand out), joined
# by every container, so no run pays for network setup; the timer joins it
# too and talks to 127.0.0.1 there.
ip netns add "$netns"
ip -n "$netns" link set lo up
fb=$work/fn-bundle
mkdir -p "$fb/rootfs/bin" "$fb/rootfs/proc" "$fb/rootfs/dev" "$fb/rootfs/usr" "$fb/rootfs/app" "$fb/rootfs/tmp"
ln -s usr/lib "$fb/rootfs/lib"
ln -s usr/lib64 "$fb/rootfs/lib64"
cp tests/programs/function.py "$fb/rootfs/app/"
python3 - "$bundle/config.json" "$fb/config.json" "/var/run/netns/$netns" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["args"] = ["/usr/bin/python3", "/app/function.py", "8080"]
c["mounts"] = [m for m in c["mounts"] if m["destination"] not in ("/sys", "/sys/fs/cgroup")]
c["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]})
c["root"]["readonly"] = True
c["linux"]["cgroupsPath"] = "sprout-demo-fn"
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] not in ("network", "cgroup")]
c["linux"]["namespaces"].append({"type": "network", "path": sys.argv[3]})
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY

# sproutd holds the templates; instances of this bundle join the same
# network namespace (the bundle names it by path).
"$sproutd" --root "$work/sproutd" --socket "$work/sproutd.sock" --side-socket "$work/side.sock" \
    2>"$work/sproutd.log" &
sproutd_pid=$!

python3 - "$sprout" "$work" "$fb" "/var/run/netns/$netns" "${RUNS_FN:-10}" <<'PY'
import ctypes, http.client, json, os, socket, statistics, subprocess, sys, time
sprout, work, bundle, ns, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(ns, os.O_RDONLY)
if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET: this process only
    sys.exit("setns failed")

def answer():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
            s.sendall(b"GET /demo HTTP/1.1\r\nHost: fn\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            if data.startswith(b"HTTP/1.1 200"):
                return data.split(b"\r\n\r\n", 1)[1].decode()
        except OSError:
            time.sleep(0.0002)
    sys.exit("no answer within 30 s")

class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("sproutd")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)

def api(method, path, body=None):
    c = UnixHTTP(work + "/sproutd.sock")
    c.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status >= 300:
        sys.exit("sproutd %s %s: %d %s" % (method, path, r.status, data.decode()))
    return json.loads(data) if data else None

def run(cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def timed(start, delete):
    t = time.perf_counter()
    run(start)
    body = answer()
    dt = (time.perf_counter() - t) * 1000
    run(delete)
    return dt, body

sroot = ["--root", work + "/sprout-state"]
image = work + "/fn-image"
print("== the Python function, from nothing to its first HTTP answer (median of %d):" % runs)
run([sprout, *sroot, "run", "-d", "--bundle", bundle, "fn-img"])
answer()
run([sprout, *sroot, "checkpoint", "--image-path", image, "fn-img"])
run([sprout, *sroot, "delete", "--force", "fn-img"])
res = {}
if subprocess.run(["sh", "-c", "command -v runc"], stdout=subprocess.DEVNULL).returncode == 0:
    rroot = ["--root", work + "/runc-state"]
    res["runc run (cold start)"] = [timed(["runc", *rroot, "run", "-d", "--bundle", bundle, "fn"], ["runc", *rroot, "delete", "--force", "fn"]) for _ in range(runs)]
res["sprout run (cold start)"] = [timed([sprout, *sroot, "run", "-d", "--bundle", bundle, "fn"], [sprout, *sroot, "delete", "--force", "fn"]) for _ in range(runs)]
res["sprout restore"] = [timed([sprout, *sroot, "restore", "-d", "--image-path", image, "--bundle", bundle, "fn"], [sprout, *sroot, "delete", "--force", "fn"]) for _ in range(runs)]
deadline = time.monotonic() + 10
while not os.path.exists(work + "/sproutd.sock"):
    if time.monotonic() > deadline:
        sys.exit("sproutd did not start: see " + work + "/sproutd.log")
    time.sleep(0.01)
api("POST", "/functions", {"name": "fn", "image": image, "bundle": bundle})
t = time.perf_counter()
api("POST", "/functions/fn/template")
load_ms = (time.perf_counter() - t) * 1000
forks = []
for i in range(runs):
    t = time.perf_counter()
    api("POST", "/functions/fn/instances", {"id": "fork%d" % i})
    body = answer()
    forks.append(((time.perf_counter() - t) * 1000, body))
    api("DELETE", "/instances/fork%d?force=true" % i)
res["sprout fork (sproutd)"] = forks
api("DELETE", "/functions/fn")
for name, r in res.items():
    print("   %-26s %8.1f ms" % (name, statistics.median(x[0] for x in r)))
if "runc run (cold start)" in res:
    runc = statistics.median(x[0] for x in res["runc run (cold start)"])
    for name in ("sprout restore", "sprout fork (sproutd)"):
        print("   %s / runc run = %.3f" % (name, statistics.median(x[0] for x in res[name]) / runc))
print("   (the template was loaded once, in %.1f ms, before the forks)" % load_ms)
print("   a restored instance answers:", res["sprout restore"][-1][1])
print("   a forked instance answers:  ", res["sprout fork (sproutd)"][-1][1])
PY
