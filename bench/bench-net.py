#!/usr/bin/python3
"""virtio-net + TAP: the cost of one transmitted packet, libvmm against QEMU.

The virtio-net test guest (tests/guest/virtio/virtio-net.c, flood=N) ARPs
for the host side of a TAP in a fresh network namespace and then sends N
64-byte UDP datagrams as fast as its 8-entry ring allows; a UDP socket in
the namespace counts them.  Each VMM runs the same guest with its own
virtio-net-pci (libvmm: vmm-run --netdev tap; QEMU: -netdev tap).  Printed:
wall time and VMM CPU time (user+sys of the process) per datagram for a
large and a small N (their difference removes start-up), and with
--callgrind the VMM instructions per datagram (valgrind --tool=callgrind,
total instructions of the process, again as a difference of two runs).
Ratios above 1.0 mean libvmm is cheaper.

    sudo python3 bench/bench-net.py --build build [--packets 20000] [--callgrind]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

QEMU = shutil.which("qemu-system-x86_64")


def sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


class Namespace:
    def __init__(self):
        self.name = f"vmmbench-{os.getpid()}"
        sh("ip", "netns", "add", self.name)
        for cmd in (("link", "set", "lo", "up"),
                    ("tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr"),
                    ("addr", "add", "10.0.2.1/24", "dev", "tap0"),
                    ("link", "set", "tap0", "up")):
            sh("ip", "-n", self.name, *cmd)

    def exec(self, *cmd):
        return ["ip", "netns", "exec", self.name, *cmd]

    def delete(self):
        sh("ip", "netns", "del", self.name, check=False)


def counter(ns, port):
    code = ("import socket\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,8<<20)\n"
            f"s.bind(('0.0.0.0',{port}))\n"
            "s.settimeout(3)\n"
            "print('ready',flush=True)\n"
            "n=0\n"
            "try:\n"
            "    s.settimeout(120); s.recv(2048); n=1; s.settimeout(3)\n"
            "    while True: s.recv(2048); n+=1\n"
            "except OSError: pass\n"
            "print(n,flush=True)\n")
    p = subprocess.Popen(ns.exec(sys.executable, "-c", code), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def vmm_cmd(kind, build, guest, cmdline):
    if kind == "libvmm":
        return [os.path.join(build, "tools", "vmm-run", "vmm-run"), "--machine", "pc",
                "--kernel", guest, "--append", cmdline, "--serial", "stdio",
                "--device", "isa-debug-exit,iobase=0xf4,iosize=4",
                "--netdev", "tap,id=n0,ifname=tap0", "--device", "virtio-net-pci,netdev=n0"]
    return [QEMU, "-machine", "q35", "-enable-kvm", "-cpu", "host,-arch-capabilities",
            "-m", "256M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", guest, "-append", cmdline,
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,romfile="]


def callgrind_total(path):
    text = open(path).read()
    m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def one_run(ns, kind, args, packets, callgrind):
    """(wall s, cpu s, instructions or 0) of one VMM run sending `packets`."""
    listener = counter(ns, 9999)
    cmd = vmm_cmd(kind, args.build, args.guest, f"transport=pci flood={packets}")
    out_file = None
    if callgrind:
        out_file = tempfile.NamedTemporaryFile(prefix="cg-", suffix=".out", delete=False).name
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out_file,
               "--trace-children=no", *cmd]
    start = time.monotonic()
    proc = subprocess.Popen(ns.exec(*cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    out = proc.stdout.read().decode(errors="replace")
    got = int(listener.communicate(timeout=30)[0].strip() or 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 33 or "flood: %d datagrams sent" % packets not in out:
        raise SystemExit(f"{kind} flood={packets}: status {code}\n{out}\n"
                         f"{proc.stderr.read().decode(errors='replace')}")
    if got < packets * 0.9:
        print(f"warning: {kind}: the host socket counted {got} of {packets}", file=sys.stderr)
    # `ip netns exec` execs the VMM: the rusage is the VMM's own.
    instructions = callgrind_total(out_file) if out_file else 0
    if out_file:
        os.unlink(out_file)
    return wall, usage.ru_utime + usage.ru_stime, instructions


def per_packet(ns, kind, args, callgrind=False, big=None, small=None):
    big = big or args.packets
    small = small or max(1, big // 10)
    best = None
    for _ in range(args.repeat):
        b, s = one_run(ns, kind, args, big, callgrind), one_run(ns, kind, args, small, callgrind)
        row = tuple((x - y) / (big - small) for x, y in zip(b, s))
        best = row if best is None else tuple(min(p, q) for p, q in zip(best, row))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--callgrind", action="store_true",
                    help="also count VMM instructions per packet (slow: uses --cg-packets)")
    ap.add_argument("--cg-packets", type=int, default=2000)
    args = ap.parse_args()
    args.guest = os.path.join(args.build, "tests", "guest", "virtio", "virtio-net.elf")
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or QEMU is None:
        raise SystemExit("needs root, /dev/net/tun and qemu-system-x86_64")
    ns = Namespace()
    try:
        rows = [("libvmm", per_packet(ns, "libvmm", args)), ("qemu", per_packet(ns, "qemu", args))]
        print(f"virtio-net TX, {args.packets} minus {args.packets // 10} datagrams of 64 bytes, "
              f"per datagram:")
        print(f"{'':8} {'wall us':>10} {'VMM CPU us':>12}")
        for name, (wall, cpu, _) in rows:
            print(f"{name:8} {wall * 1e6:10.2f} {cpu * 1e6:12.2f}")
        (lw, lc, _), (qw, qc, _) = rows[0][1], rows[1][1]
        print(f"{'qemu/libvmm':8} {qw / lw if lw > 0 else 0:10.2f} {qc / lc if lc > 0 else 0:12.2f}")
        if args.callgrind:
            li = per_packet(ns, "libvmm", args, True, args.cg_packets)[2]
            qi = per_packet(ns, "qemu", args, True, args.cg_packets)[2]
            print(f"VMM instructions per datagram (callgrind, {args.cg_packets} minus "
                  f"{args.cg_packets // 10}): libvmm {li:.0f}, qemu {qi:.0f}, "
                  f"qemu/libvmm {qi / li if li > 0 else 0:.2f}")
    finally:
        ns.delete()


if __name__ == "__main__":
    main()
