#!/usr/bin/env bash
# sprout's main job, end to end on this machine: build; start a busybox
# container with sprout and with runc; then a small Python HTTP function
# (tests/programs/function.py) from nothing to its first HTTP answer, the
# start paths side by side: cold start with runc (and sprout), restore of
# its initialized image with sprout (every page copied in, or lazily with
# userfaultfd after the working set), an instance forked by sproutd from a
# template of that image, and a claim of an instance sproutd's warm pool
# forked ahead of the request (a pool hit).
# Needs root, busybox-static, python3, iproute2 and (to compare) runc.
# Leaves nothing behind: sproutd is stopped by pid, containers deleted,
# the demo's cgroups (named sprout-demo-<pid>...) and namespace removed.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-20}
echo "building (release)..." >&2
cargo build --release --quiet -p sprout -p sprout-shim --bins
sprout=$PWD/target/x86_64-unknown-linux-gnu/release/sprout
sproutd=$PWD/target/x86_64-unknown-linux-gnu/release/sproutd

work=$(mktemp -d /tmp/sprout-demo.XXXXXX)
netns=sprout-demo-$$
sproutd_pid=
cg=sprout-demo-$$
cleanup() {
    if [ -n "$sproutd_pid" ]; then
        kill "$sproutd_pid" 2>/dev/null || true
        wait "$sproutd_pid" 2>/dev/null || true
    fi
    # sproutd's instances and template holders (holders outlive it by
    # design), then the demo's own containers.
    for root in "$work/sproutd/runtime" "$work/sproutd/engine/holders"; do
        for d in "$root"/*/; do
            [ -d "$d" ] || continue
            "$sprout" --root "$root" delete --force "$(basename "$d")" >/dev/null 2>&1 || true
        done
    done
    for id in demo fn fn-img; do
        "$sprout" --root "$work/sprout-state" delete --force $id >/dev/null 2>&1 || true
        if command -v runc >/dev/null; then
            runc --root "$work/runc-state" delete --force $id >/dev/null 2>&1 || true
        fi
    done
    # The demo's cgroups, deepest first (rmdir only removes empty ones).
    find /sys/fs/cgroup -maxdepth 8 -depth -type d \( -path "*/$cg" -o -path "*/$cg-*" -o -path "*/$cg/*" \) \
        -exec rmdir {} + 2>/dev/null || true
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
python3 - "$bundle/config.json" "$cg" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", "echo hello from $(hostname), pid $$"]
c["linux"]["cgroupsPath"] = sys.argv[2]
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

# --- The Python function: its start paths, each to the first answer. ---
# One network namespace with lo up (what netplug's pools hand out), joined
# by every container that starts on the request's path, so no run pays for
# network setup; the timer talks to 127.0.0.1 there. sproutd's pool holds
# instances side by side, so its function's bundle gives each instance a
# namespace of its own, made when the pool forks it, ahead of the request.
ip netns add "$netns"
ip -n "$netns" link set lo up
fb=$work/fn-bundle
pb=$work/pool-bundle
mkdir -p "$fb/rootfs/bin" "$fb/rootfs/proc" "$fb/rootfs/dev" "$fb/rootfs/usr" "$fb/rootfs/app" "$fb/rootfs/tmp" "$pb"
ln -s usr/lib "$fb/rootfs/lib"
ln -s usr/lib64 "$fb/rootfs/lib64"
cp tests/programs/function.py "$fb/rootfs/app/"
python3 - "$bundle/config.json" "$fb" "$pb" "/var/run/netns/$netns" "$cg" <<'PY'
import json, sys
src, fb, pb, ns, cg = sys.argv[1:]
c = json.load(open(src))
c["process"]["args"] = ["/usr/bin/python3", "/app/function.py", "8080"]
c["mounts"] = [m for m in c["mounts"] if m["destination"] not in ("/sys", "/sys/fs/cgroup")]
c["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]})
c["root"]["readonly"] = True
c["linux"]["cgroupsPath"] = cg + "-fn"
others = [n for n in c["linux"]["namespaces"] if n["type"] not in ("network", "cgroup")]
c["linux"]["namespaces"] = others + [{"type": "network", "path": ns}]
json.dump(c, open(fb + "/config.json", "w"), indent=2)
c["root"]["path"] = fb + "/rootfs"
c["linux"]["cgroupsPath"] = cg + "-tpl"
c["linux"]["namespaces"] = others + [{"type": "network"}]
json.dump(c, open(pb + "/config.json", "w"), indent=2)
PY

# sproutd holds the template and the warm pool (its instances in cgroups
# of their own under $cg-pool).
"$sproutd" --root "$work/sproutd" --socket "$work/sproutd.sock" --side-socket "$work/side.sock" \
    --pool-cgroup "$cg-pool" 2>"$work/sproutd.log" &
sproutd_pid=$!

python3 - "$sprout" "$work" "$fb" "$pb" "/var/run/netns/$netns" "${RUNS_FN:-10}" <<'PY'
import ctypes, http.client, json, os, socket, statistics, subprocess, sys, time
sprout, work, bundle, pool_bundle, ns, runs = sys.argv[1:6] + [int(sys.argv[6])]
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
own_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
demo_ns = os.open(ns, os.O_RDONLY)

def socket_in(ns_fd):
    """A TCP socket of the network namespace ns_fd (a socket stays in the
    namespace it was made in); this thread goes back to its own."""
    if libc.setns(ns_fd, CLONE_NEWNET) != 0:
        sys.exit("setns: %s" % os.strerror(ctypes.get_errno()))
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        if libc.setns(own_ns, CLONE_NEWNET) != 0:
            sys.exit("setns back: %s" % os.strerror(ctypes.get_errno()))

def answer(ns_fd=demo_ns):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = socket_in(ns_fd)
        try:
            s.settimeout(5)
            s.connect(("127.0.0.1", 8080))
            s.sendall(b"GET /demo HTTP/1.1\r\nHost: fn\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            if data.startswith(b"HTTP/1.1 200"):
                return data.split(b"\r\n\r\n", 1)[1].decode()
        except OSError:
            time.sleep(0.0002)
        finally:
            s.close()
    sys.exit("no answer within 30 s")

def answer_of(pid):
    fd = os.open("/proc/%d/ns/net" % pid, os.O_RDONLY)
    try:
        return answer(fd)
    finally:
        os.close(fd)

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
# The image's working set: the pages one request touches, recorded once;
# a lazy restore loads those first and the rest behind the process.
run([sprout, *sroot, "restore", "-d", "--record-working-set", "--image-path", image, "--bundle", bundle, "fn-rec"])
answer()
run([sprout, *sroot, "image", "profile", "fn-rec"])
run([sprout, *sroot, "delete", "--force", "fn-rec"])
res["sprout restore, lazy"] = [timed([sprout, *sroot, "restore", "-d", "--lazy-pages", "--image-path", image, "--bundle", bundle, "fn"], [sprout, *sroot, "delete", "--force", "fn"]) for _ in range(runs)]
deadline = time.monotonic() + 10
while not os.path.exists(work + "/sproutd.sock"):
    if time.monotonic() > deadline:
        sys.exit("sproutd did not start: see " + work + "/sproutd.log")
    time.sleep(0.01)
api("POST", "/functions", {"name": "fn", "image": image, "bundle": pool_bundle})
t = time.perf_counter()
api("POST", "/functions/fn/template")
load_ms = (time.perf_counter() - t) * 1000

# A fork on the request's path, into the demo's namespace.
forks = []
for i in range(runs):
    t = time.perf_counter()
    api("POST", "/functions/fn/instances", {"id": "fork%d" % i, "bundle": bundle})
    body = answer()
    forks.append(((time.perf_counter() - t) * 1000, body))
    api("DELETE", "/instances/fork%d?force=true" % i)
res["sproutd fork"] = forks

# The warm pool: one instance forked and frozen ahead of the request
# ("none": nothing but that floor); each claim takes it (limits applied,
# thawed) and wakes a refill, waited for before the next claim.
api("PUT", "/functions/fn/pool/policy", {"strategy": "none"})
api("POST", "/functions/fn/pool/prewarm", {"count": 1})
claims, claim_us = [], []
for i in range(runs):
    deadline = time.monotonic() + 30
    while [x["state"] for x in api("GET", "/functions/fn/pool")["instances"]] != ["frozen"]:
        if time.monotonic() > deadline:
            sys.exit("the pool was not refilled: %s" % api("GET", "/functions/fn/pool"))
        time.sleep(0.001)
    t = time.perf_counter()
    c = api("POST", "/functions/fn/claim", {"resources": {"memory": {"limit": 256 << 20}, "pids": {"limit": 128}}})
    body = answer_of(c["pid"])
    claims.append(((time.perf_counter() - t) * 1000, body))
    if c["path"] != "pool_hit":
        sys.exit("claim %d was not a pool hit: %s" % (i, c))
    claim_us.append(c["claim_us"])
    api("POST", "/instances/%s/release" % c["id"])
res["sproutd pool hit (claim)"] = claims
api("POST", "/functions/fn/pool/drain", {"force": True})
api("DELETE", "/functions/fn")

runc = statistics.median(x[0] for x in res["runc run (cold start)"]) if "runc run (cold start)" in res else None
print("   %-26s %10s %12s" % ("start path", "median", "/ runc run"))
for name, r in res.items():
    m = statistics.median(x[0] for x in r)
    print("   %-26s %7.1f ms %12s" % (name, m, "%.3f" % (m / runc) if runc else "-"))
if runc is None:
    print("   (runc not installed: apt-get install runc to compare)")
print("   (the template was loaded once, in %.1f ms; a pool hit's claim took %d µs inside sproutd (median):"
      % (load_ms, statistics.median(claim_us)))
print("    limits applied, thawed, handed out; its instance was forked and frozen before the request)")
print("   a restored instance answers:", res["sprout restore"][-1][1])
print("   a forked instance answers:  ", res["sproutd fork"][-1][1])
print("   a pooled instance answers:  ", res["sproutd pool hit (claim)"][-1][1])
PY
