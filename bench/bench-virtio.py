#!/usr/bin/python3
"""Virtio benchmarks of issue 5: libvmm against QEMU, same guest, same run.

Usage: bench/bench-virtio.py [--build build] [--n 2000] [--wall-n 20000] [--runs 3]

Rows (see bench/README.md):
  * VMM instructions per virtio-blk 4 KiB read and per virtio-net TX
    packet (valgrind --tool=callgrind, whole process, all threads):
    (I(2N) - I(N)) / N, so start-up and teardown cancel out;
  * requests per second from the guest's tight loop: N over the time
    between the guest's console lines before and after its loop (stamped
    as they arrive on the VMM's stdout), best of --runs, as a fraction of
    the PIO-exit ceiling (pio-loop, timed the same way) in the same run.

The guest is tests/guest/virtio/virtio-bench.elf: queue depth 1, polling
the used ring, interrupts suppressed, on virtio-pci (machine pc / q35).
virtio-net frames go to a TAP in a network namespace this script creates
(root needed).  Every run must end with the guest's success status (33).
Nothing here asserts a time; it prints a table.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

SUCCESS = 33
NETNS = "vbench%d" % os.getpid()
TAP = "tapvb0"
QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
EXIT_DEV = "isa-debug-exit,iobase=0xf4,iosize=4"


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_netns():
    sh("ip", "netns", "add", NETNS)
    sh("ip", "netns", "exec", NETNS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    sh("ip", "netns", "exec", NETNS, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    sh("ip", "-n", NETNS, "tuntap", "add", "dev", TAP, "mode", "tap")
    sh("ip", "-n", NETNS, "link", "set", TAP, "up")


def drop_netns():
    subprocess.run(["ip", "netns", "del", NETNS], stderr=subprocess.DEVNULL)


class Sides:
    """The command lines of both VMMs for one device."""

    def __init__(self, build, image):
        self.vmm_run = os.path.join(build, "tools", "vmm-run", "vmm-run")
        guests = os.path.join(build, "tests", "guest")
        self.bench_elf = os.path.join(guests, "virtio", "virtio-bench.elf")
        self.pio_elf = os.path.join(guests, "pio-loop.elf")
        self.image = image
        for f in (self.vmm_run, self.bench_elf, self.pio_elf):
            if not os.path.exists(f):
                sys.exit(f"bench-virtio: {f} is missing: build first (ninja -C {build})")

    def libvmm(self, dev, n):
        cmd = [self.vmm_run, "--machine", "pc", "--serial", "stdio", "--device", EXIT_DEV,
               "--kernel", self.bench_elf, "--append", f"dev={dev} transport=pci n={n}"]
        if dev == "blk":
            cmd += ["--drive", f"file={self.image},format=raw,if=none,id=d0,cache=writeback,aio=threads",
                    "--device", "virtio-blk-pci,drive=d0"]
        else:
            cmd += ["--netdev", f"tap,id=n0,ifname={TAP}", "--device", "virtio-net-pci,netdev=n0"]
        return cmd

    def qemu(self, dev, n):
        cmd = [QEMU, "-enable-kvm", "-cpu", "host,-arch-capabilities", "-machine", "q35",
               "-m", "256M", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
               "-device", EXIT_DEV, "-kernel", self.bench_elf,
               "-append", f"dev={dev} transport=pci n={n}"]
        if dev == "blk":
            cmd += ["-drive", f"file={self.image},format=raw,if=none,id=d0,cache=writeback,aio=threads",
                    "-device", "virtio-blk-pci,drive=d0"]
        else:
            cmd += ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                    "-device", "virtio-net-pci,netdev=n0"]
        return cmd

    def pio(self, n):
        return [self.vmm_run, "--serial", "stdio", "--device", EXIT_DEV,
                "--kernel", self.pio_elf, "--append", f"count={n}"]


def run(cmd, netns, timeout=600):
    """Run one VMM to the guest's success status.  Returns the seconds
    between the guest's first and last console lines (the start and the
    end of its loop), timestamped as they arrive."""
    if netns:
        cmd = ["ip", "netns", "exec", NETNS] + cmd
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    stamps = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        stamps.append(time.monotonic())
        if time.monotonic() > deadline:
            proc.kill()
            break
    status = proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    if status != SUCCESS or len(stamps) < 2:
        raise RuntimeError("exit status %d, %d console lines from %s\n%s" %
                           (status, len(stamps), " ".join(cmd), err[-2000:]))
    return stamps[-1] - stamps[0]


def instructions(cmd, netns):
    """Instructions the whole process executed (callgrind's totals)."""
    with tempfile.NamedTemporaryFile(prefix="cg.", dir="/tmp") as out:
        run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out.name] + cmd,
            netns, timeout=1800)
        text = open(out.name).read()
    m = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
    if not m:
        raise RuntimeError("no totals in callgrind output")
    return int(m.group(1))


def per_request_instructions(make_cmd, n, netns):
    return (instructions(make_cmd(2 * n), netns) - instructions(make_cmd(n), netns)) / n


def per_second(make_cmd, n, runs, netns):
    return n / min(run(make_cmd(n), netns) for _ in range(runs))


def table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--n", type=int, default=2000, help="requests in the short callgrind run")
    ap.add_argument("--wall-n", type=int, default=20000, help="requests in a timed run")
    ap.add_argument("--runs", type=int, default=3, help="best of this many wall-time runs")
    ap.add_argument("--only", choices=["blk", "net"], help="one device")
    args = ap.parse_args()
    devices = [args.only] if args.only else ["blk", "net"]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        image = os.path.join(tmp, "bench.raw")
        sh("qemu-img", "create", "-f", "raw", image, "64M")
        sh("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", image)
        sides = Sides(args.build, image)
        rows = [("row", "libvmm", "QEMU", "ratio", "target", "met")]
        if "net" in devices:
            make_netns()
        try:
            ceiling = per_second(sides.pio, args.wall_n * 10, args.runs, False)
            for dev in devices:
                netns = dev == "net"
                what = "4 KiB read" if dev == "blk" else "TX packet"
                print(f"bench-virtio: {dev}: callgrind ...", file=sys.stderr, flush=True)
                ours = per_request_instructions(lambda n: sides.libvmm(dev, n), args.n, netns)
                theirs = per_request_instructions(lambda n: sides.qemu(dev, n), args.n, netns)
                rows.append((f"virtio-{dev} VMM instructions per {what}", f"{ours:.0f}",
                             f"{theirs:.0f}", f"{ours / theirs:.2f}", "< 1 (fewer than QEMU)",
                             "yes" if ours < theirs else "NO"))
                print(f"bench-virtio: {dev}: wall ...", file=sys.stderr, flush=True)
                rate = per_second(lambda n: sides.libvmm(dev, n), args.wall_n, args.runs, netns)
                qrate = per_second(lambda n: sides.qemu(dev, n), args.wall_n, args.runs, netns)
                rows.append((f"virtio-{dev} requests/s (QD1) / PIO ceiling {ceiling:.0f}/s",
                             f"{rate:.0f} ({rate / ceiling:.2f})",
                             f"{qrate:.0f} ({qrate / ceiling:.2f})", f"{rate / qrate:.2f}",
                             "fraction of ceiling, printed", ""))
        finally:
            if "net" in devices:
                drop_netns()
    table(rows)


if __name__ == "__main__":
    main()
