#!/usr/bin/env python3
"""QMP round trips per second: query-status against libvmm (vmm-run --qmp)
and QEMU 7.2 (qemu-system-x86_64 -machine microvm -qmp), same client
(libvmm.qmp.QMPClient), same guest (pio-loop.elf running), one run each.

    ninja -C build && python3 bench/bench-qmp.py --build build [--seconds 3]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def start(argv, path):
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("%s did not start: %s" % (argv[0], proc.stderr.read().decode()))
        time.sleep(0.02)
    return proc


def round_trips(client, seconds, command="query-status"):
    for _ in range(100):  # warm up
        client.execute(command)
    count = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(100):
            reply = client.execute(command)
        count += 100
        now = time.perf_counter()
        if now >= end:
            break
    assert "return" in reply, reply
    return count / (now - t0)


def measure(argv, path, seconds, QMPClient):
    proc = start(argv, path)
    try:
        with QMPClient(path) as c:
            return round_trips(c, seconds)
    finally:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(args.build, "bindings", "python"))
    import libvmm
    from libvmm.qmp import QMPClient

    guest = os.path.join(args.build, "tests", "guest", "pio-loop.elf")
    exit_dev = "isa-debug-exit,iobase=0xf4,iosize=4"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-qmp-") as tmp:
        ours = os.path.join(tmp, "vmm.sock")
        rows.append(("libvmm (vmm-run --qmp)", measure(
            [os.path.join(args.build, "tools", "vmm-run", "vmm-run"), "--kernel", guest,
             "--append", "count=1000000000", "--device", exit_dev, "--serial", "none",
             "--qmp", "unix:%s,server,nowait" % ours], ours, args.seconds, QMPClient)))
        if shutil.which("qemu-system-x86_64"):
            theirs = os.path.join(tmp, "qemu.sock")
            rows.append(("QEMU 7.2 (-qmp)", measure(
                ["qemu-system-x86_64", "-machine", "microvm,rtc=on,acpi=on", "-enable-kvm",
                 "-cpu", "host,-arch-capabilities", "-nodefaults", "-nographic", "-m", "256M",
                 "-kernel", guest, "-append", "count=1000000000", "-device", exit_dev,
                 "-serial", "none", "-qmp", "unix:%s,server=on,wait=off" % theirs],
                theirs, args.seconds, QMPClient)))
        # In-process, no socket: what an embedder gets from vmm_control_execute.
        with libvmm.Machine(kernel=guest, cmdline="count=1000000000", devices=[exit_dev]) as m:
            m.start()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                for _ in range(100):
                    m.qmp("query-status")
                n += 100
            rows.append(("libvmm vmm_control_execute (no socket)", n / (time.perf_counter() - t0)))

    base = rows[1][1] if len(rows) > 2 else None
    print("QMP query-status round trips per second (%.1f s each, one client)" % args.seconds)
    print("%-42s %12s %10s" % ("server", "round trips/s", "vs QEMU"))
    for name, rate in rows:
        ratio = "%.2fx" % (rate / base) if base else "-"
        print("%-42s %12.0f %10s" % (name, rate, ratio))


if __name__ == "__main__":
    main()
