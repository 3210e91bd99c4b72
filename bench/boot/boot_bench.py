#!/usr/bin/env python3
"""Boot-time benchmark: Berth (UEFI chain and direct kernel) vs. a bare busybox initramfs.

Boots each variant RUNS times (alternating) with the same QEMU (TCG) and prints per-phase
medians: a budget from kernel start to `services` (every system container runs). Host-side
times are taken when a line first shows up in the serial log (polled every 10 ms);
guest-side times are CLOCK_BOOTTIME values printed by Berth's init.

  firmware+loader = host time of the first `berth: stage1` line - its guest timestamp
  kernel          = guest t of `stage1` (kernel start to /init; includes initramfs unpack)
  modules, root, state, switch-root, stage2, ready, services
                  = guest t of that phase - t of the one before (stage 1: load modules,
                    dm-verity + EROFS root, /var; stage 2: PID 1 setup, sysd to API up,
                    API up to every system container running)
"""
import json, os, re, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = os.environ.get("BERTH_IMAGE", os.path.join(ROOT, "build/x86_64/berth.img"))
KERNEL = os.path.join(ROOT, "build/x86_64/kernel/vmlinuz")
RUNS = int(os.environ.get("RUNS", "3"))


def wait_lines(log, needles, timeout=300):
    """Return {needle: host_seconds_since_start} for each needle, as first seen."""
    seen, start = {}, time.monotonic()
    while len(seen) < len(needles) and time.monotonic() - start < timeout:
        try:
            text = open(log, "rb").read().decode("utf-8", "replace")
        except FileNotFoundError:
            text = ""
        for n in needles:
            if n not in seen and n in text:
                seen[n] = time.monotonic() - start
        time.sleep(0.01)
    return seen, text


PHASES = ["stage1", "modules", "root", "state", "switch-root", "stage2", "ready", "services"]


def berth_once(direct):
    d = tempfile.mkdtemp(prefix="berth-bench-boot-")
    t0 = time.monotonic()
    lane = ["--direct"] if direct else []
    subprocess.run([os.path.join(ROOT, "qemu/run.sh"), "--headless", *lane, "--state-dir", d, IMAGE], check=True)
    seen, text = wait_lines(os.path.join(d, "serial.log"), ["berth: stage1", "berth: services"])
    pid = int(open(os.path.join(d, "qemu.pid")).read())
    os.kill(pid, 9)
    t = {m.group(1): float(m.group(2)) for m in re.finditer(r"berth: (\S+) t=([0-9.]+)", text)}
    shutil.rmtree(d, ignore_errors=True)
    if "berth: stage1" not in seen or any(p not in t for p in PHASES):
        raise SystemExit("berth boot did not reach services:\n" + text[-2000:])
    row = {"firmware+loader": seen["berth: stage1"] - t["stage1"], "kernel": t["stage1"]}
    for before, p in zip(PHASES, PHASES[1:]):
        row[p] = t[p] - t[before]
    row["kernel start->services"] = t["services"]
    row["total (host)"] = seen["berth: services"]
    return row


def busybox_initramfs(path):
    """A bare busybox initramfs whose /init prints the uptime and powers off."""
    d = tempfile.mkdtemp(prefix="bb-initramfs-")
    os.makedirs(os.path.join(d, "bin"))
    os.makedirs(os.path.join(d, "proc"))
    shutil.copy("/bin/busybox", os.path.join(d, "bin/busybox"))
    for a in ["sh", "cat", "mount", "poweroff"]:
        os.symlink("busybox", os.path.join(d, "bin", a))
    with open(os.path.join(d, "init"), "w") as f:
        f.write("#!/bin/sh\nmount -t proc proc /proc\necho \"baseline: init t=$(cut -d' ' -f1 /proc/uptime)\"\npoweroff -f\n")
    os.chmod(os.path.join(d, "init"), 0o755)
    subprocess.run(f"cd {d} && find . | cpio -o -H newc --quiet | gzip -1 > {path}", shell=True, check=True)
    shutil.rmtree(d)


def baseline_once(initrd):
    d = tempfile.mkdtemp(prefix="bb-boot-")
    log = os.path.join(d, "serial.log")
    t0 = time.monotonic()
    p = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-cpu", "max", "-m", "1024",
                          "-smp", "2", "-display", "none", "-no-reboot", "-serial", f"file:{log}",
                          "-kernel", KERNEL, "-initrd", initrd, "-append", "console=ttyS0 quiet"])
    seen, text = wait_lines(log, ["baseline: init"])
    p.wait(timeout=60)
    m = re.search(r"baseline: init t=([0-9.]+)", text)
    shutil.rmtree(d, ignore_errors=True)
    return {"kernel": float(m.group(1)) if m else float("nan"), "total (host)": seen.get("baseline: init", float("nan"))}


def main():
    initrd = os.path.join(tempfile.gettempdir(), "berth-bench-busybox.cpio.gz")
    busybox_initramfs(initrd)
    uefi, direct, base = [], [], []
    for i in range(RUNS):
        uefi.append(berth_once(False))
        direct.append(berth_once(True))
        base.append(baseline_once(initrd))
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    print(f"boot phases, median of {RUNS} runs (seconds; QEMU TCG, 2 vCPU, {os.cpu_count()} host cores)")
    print(f"{'phase':<24}{'Berth (UEFI)':>14}{'Berth (direct)':>16}{'busybox (direct)':>18}")
    keys = ["firmware+loader", "kernel"] + PHASES[1:] + ["kernel start->services", "total (host)"]
    for k in keys:
        bb = f"{med(base, k):.2f}" if k in base[0] else "-"
        print(f"{k:<24}{med(uefi, k):>14.2f}{med(direct, k):>16.2f}{bb:>18}")
    user = med(direct, "kernel start->services") - med(direct, "kernel")
    print(f"userspace (stage1 -> services, direct): {user:.2f} s = "
          f"{100 * user / med(direct, 'kernel'):.0f}% of the kernel's own time")
    info = json.load(open(os.path.join(os.path.dirname(IMAGE), "image.json")))
    mib = lambda b: b / 1048576
    print(f"sizes: disk {mib(info['disk_bytes']):.0f} MiB (sparse), root {mib(info['root_bytes']):.1f} MiB, "
          f"initrd {mib(info['initrd_bytes']):.1f} MiB, kernel {mib(info['kernel_bytes']):.1f} MiB")


if __name__ == "__main__":
    main()
