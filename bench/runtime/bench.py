#!/usr/bin/env python3
"""Side-by-side benchmark: create + start + wait + delete of /bin/true from
the same bundle, N runs per runtime, runtimes alternating run by run.

Prints median and p90 wall time per cycle, the ratio to crun, and the peak
RSS of any runtime process (create, start or delete). Not a timed test.

Usage: bench.py [--runs N] [--runtime NAME=PATH ...]
Defaults: berth-runtime from $BERTH_RUNTIME (or the release build in
/work/target-runtime), runc and crun from $PATH. Needs root and
busybox-static. On a hybrid-cgroup host run it through bench.sh, which hides
the unified cgroup.controllers file in a private mount namespace so crun
falls back to cgroup v1 (berth-runtime still uses the cgroup2 mount).
"""
import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PR_SET_CHILD_SUBREAPER = 36


def find_busybox():
    for p in ("/usr/bin/busybox", "/bin/busybox"):
        if os.path.exists(p):
            return p
    sys.exit("busybox not found: apt-get install busybox-static")


def make_bundle(berth):
    d = tempfile.mkdtemp(prefix="berth-bench-")
    os.chmod(d, 0o755)
    rootfs = os.path.join(d, "rootfs")
    for sub in ("bin", "proc", "sys", "dev", "tmp"):
        os.makedirs(os.path.join(rootfs, sub))
    shutil.copy(find_busybox(), os.path.join(rootfs, "bin/busybox"))
    os.symlink("busybox", os.path.join(rootfs, "bin/true"))
    subprocess.run([berth, "spec", "--bundle", d], check=True)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    return d


RSS_FILE = None


def run_cmd(argv, rss):
    """Runs argv, returns its exit status. When `rss` is given the command
    runs under GNU time (package `time`), whose fork has a ~1 MiB footprint,
    and the peak RSS (KiB) is recorded; a fork of this Python process would
    report Python's own RSS."""
    if rss is not None:
        argv = ["/usr/bin/time", "-f", "%M", "-o", RSS_FILE] + argv
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    if rss is not None:
        with open(RSS_FILE) as f:
            rss[0] = max(rss[0], int(f.read().split()[-1]))
    return os.waitstatus_to_exitcode(status)


def cycle(name, path, bundle, root, cid, pidfile, rss):
    t0 = time.perf_counter()
    rc = run_cmd([path, "--root", root, "create", "--bundle", bundle,
                  "--pid-file", pidfile, cid], rss)
    if rc != 0:
        sys.exit(f"{name}: create failed ({rc})")
    with open(pidfile) as f:
        pid = int(f.read().strip())
    if run_cmd([path, "--root", root, "start", cid], rss) != 0:
        sys.exit(f"{name}: start failed")
    # We are a child subreaper, so the container (orphaned when the create
    # process exited) is our child: wait for its exit.
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        while os.path.exists(f"/proc/{pid}"):
            time.sleep(0.0002)
    if run_cmd([path, "--root", root, "delete", cid], rss) != 0:
        sys.exit(f"{name}: delete failed")
    return time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--runtime", action="append", default=[])
    a = ap.parse_args()
    berth = os.environ.get(
        "BERTH_RUNTIME",
        "/work/target-runtime/x86_64-unknown-linux-gnu/release/berth-runtime")
    runtimes = [("berth-runtime", berth)]
    for n in ("runc", "crun"):
        p = shutil.which(n)
        if p:
            runtimes.append((n, p))
    for spec in a.runtime:
        n, p = spec.split("=", 1)
        runtimes.append((n, p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    bundle = make_bundle(berth)
    state = tempfile.mkdtemp(prefix="berth-bench-state-")
    global RSS_FILE
    RSS_FILE = os.path.join(state, "rss")
    times = {n: [] for n, _ in runtimes}
    rss = {n: [0] for n, _ in runtimes}
    try:
        # One warm-up cycle each (page cache, first cgroup creation).
        for n, p in runtimes:
            cycle(n, p, bundle, os.path.join(state, n), "warm", os.path.join(state, n + ".pid"), None)
        for i in range(a.runs):
            for n, p in runtimes:
                t = cycle(n, p, bundle, os.path.join(state, n), f"b{i}",
                          os.path.join(state, n + ".pid"), None)
                times[n].append(t)
        # Peak RSS in separate, untimed cycles (GNU time adds a fork+exec).
        for n, p in runtimes:
            for i in range(5):
                cycle(n, p, bundle, os.path.join(state, n), f"r{i}",
                      os.path.join(state, n + ".pid"), rss[n])
    finally:
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    base = statistics.median(times["crun"]) if "crun" in times else None
    print(f"create+start+wait+delete of /bin/true, {a.runs} runs each, alternating")
    print(f"{'runtime':<15} {'median ms':>10} {'p90 ms':>8} {'vs crun':>8} {'peak RSS KiB':>13}")
    for n, _ in runtimes:
        med = statistics.median(times[n])
        ratio = f"{med / base:.2f}" if base else "-"
        print(f"{n:<15} {med * 1000:>10.2f} {pct(times[n], 0.9) * 1000:>8.2f} {ratio:>8} {rss[n][0]:>13}")


if __name__ == "__main__":
    main()
