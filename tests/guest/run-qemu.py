#!/usr/bin/python3
"""Boot one test guest under qemu-system-x86_64 -machine microvm and check it.

Usage: run-qemu.py EXPECTATIONS_JSON TEST_NAME GUEST_ELF [--qemu PATH]

The machine, the exit status and the console patterns come from
tests/guest/expectations.json, the same data the libvmm-side runner reads.
Exit status: 0 pass, 1 fail, 77 skip (no usable /dev/kvm or no QEMU).
"""
import argparse
import datetime
import json
import os
import re
import select
import time
import shutil
import subprocess
import socket
import sys
import tempfile
import threading

SKIP = 77


def prepare_images(test, workdir):
    """Create test["images"] ({name: {format, size, prefill}}) in workdir
    with qemu-img (prefill: a qemu-io command run on the new image);
    returns {name: path}."""
    paths = {}
    for name, image in test.get("images", {}).items():
        path = os.path.join(workdir, f"{name}.{image['format']}")
        subprocess.run(["qemu-img", "create", "-q", "-f", image["format"], path, image["size"]],
                       check=True)
        if image.get("prefill"):
            subprocess.run(["qemu-io", "-f", image["format"], "-c", image["prefill"], path],
                           check=True, stdout=subprocess.DEVNULL)
        paths[name] = path
    return paths


def substitute(items, paths):
    """Replace {name} with the image's path in each string."""
    out = []
    for item in items:
        for name, path in paths.items():
            item = item.replace("{" + name + "}", path)
        out.append(item)
    return out


def compare_images(test, paths):
    """test["image_compare"]: {name: [qemu-io commands]} builds a raw
    reference of the image's size from those commands; the whole image must
    then compare equal to it (qemu-img compare): nothing stray anywhere."""
    problems = []
    for name, commands in test.get("image_compare", {}).items():
        path, fmt = paths[name], test["images"][name]["format"]
        ref = path + ".expected"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", ref, test["images"][name]["size"]],
                       check=True)
        for c in commands:
            subprocess.run(["qemu-io", "-f", "raw", "-c", c, ref], check=True,
                           stdout=subprocess.DEVNULL)
        proc = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", path, ref],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            problems.append(f"image {name} differs from the expected content: {proc.stdout.strip()}")
        else:
            print(f"image compare ok: {name} = {' ; '.join(commands)}")
    return problems


def check_images(test, paths):
    """Run test["image_checks"] (commands such as qemu-io -r -c 'read -P ..'
    or qemu-img check); each must exit 0 without a failed verification;
    then test["image_compare"]."""
    problems = compare_images(test, paths)
    for cmd in test.get("image_checks", []):
        cmd = substitute(cmd, paths)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        bad = re.search(r"verification failed|read failed|write failed", proc.stdout, re.I)
        if proc.returncode != 0 or bad:
            problems.append(f"image check {' '.join(cmd)!r} (status {proc.returncode}): "
                            f"{proc.stdout.strip()}")
        else:
            print(f"image check ok: {' '.join(cmd)}")
    return problems


def qemu_command(qemu, conf, test, elf):
    cmd = [
        qemu,
        "-machine", test.get("qemu_machine", conf["machine"]),
        "-enable-kvm",
        "-cpu", conf["cpu"],
        "-smp", str(test["cpus"]),
        "-m", test["memory"],
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-serial", "stdio",
        "-kernel", elf,
    ]
    if test.get("test_exit_device", True):
        cmd += ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    if test.get("cmdline"):
        cmd += ["-append", test["cmdline"]]
    cmd += test.get("qemu_args", [])
    return cmd


def image_workdir(test):
    """A temporary directory for the test's images (None without images)."""
    return tempfile.TemporaryDirectory(prefix="vmm-guest-") if test.get("images") else None


def check_rtc(console, tolerance_s):
    """The guest's 'rtc: ...' line must be close to the host's UTC clock."""
    m = re.search(r"^rtc: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", console, re.MULTILINE)
    if not m:
        return ["no 'rtc: YYYY-MM-DD HH:MM:SS' line"]
    guest = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
    host = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    delta = abs((host - guest).total_seconds())
    if delta > tolerance_s:
        return [f"guest RTC {guest} is {delta:.0f} s away from host UTC {host:%Y-%m-%d %H:%M:%S}"]
    return []


def check(test, status, console):
    problems = []
    if status != test["status"]:
        problems.append(f"exit status {status}, expected {test['status']}")
    for pattern in test.get("console", []):
        if not re.search(pattern, console, re.MULTILINE):
            problems.append(f"console does not match {pattern!r}")
    for pattern in test.get("absent", []):
        m = re.search(pattern, console, re.MULTILINE)
        if m:
            problems.append(f"console unexpectedly matches {pattern!r}: {m.group(0)!r}")
    if "rtc_utc_tolerance_s" in test:
        problems += check_rtc(console, test["rtc_utc_tolerance_s"])
    return problems


def with_dir(test, directory):
    """The test with "{dir}" in its strings replaced (socket paths)."""
    return json.loads(json.dumps(test).replace("{dir}", directory))


def connect_unix(path, timeout, stop=None, required=False):
    """A stream socket connected to `path`, retrying while nothing listens
    there yet; None after `timeout` seconds (or once `stop` is set), or
    with `required` a TimeoutError."""
    deadline = time.monotonic() + timeout
    while not (stop and stop.is_set()) and time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            time.sleep(0.05)
    if required:
        raise TimeoutError(f"nothing listens at {path} after {timeout} s")
    return None


class SocketPeer(threading.Thread):
    """The host end of a guest's port (test["socket_peers"]): connects to
    the machine's Unix socket chardev, waits for `expect` (a regex) in what
    the guest sends and, with `reply`, answers reply + the matched text;
    `greeting` is sent as soon as it connects (before the guest opens its
    port: the device must hold it, not drop it).  With `bulk` (bytes), what
    follows the matched line must be that many bytes of i % 251; the peer
    stops reading for `bulk_delay_s` after its reply so that the guest runs
    into a full socket (backpressure) and must wait, not lose data."""

    def __init__(self, spec, timeout):
        super().__init__(daemon=True)
        self.path, self.expect = spec["path"], re.compile(spec["expect"].encode(), re.MULTILINE)
        self.reply, self.greeting = spec.get("reply"), spec.get("greeting")
        self.bulk, self.bulk_delay = spec.get("bulk", 0), spec.get("bulk_delay_s", 0)
        self.bulk_from, self.replied_at = None, None
        self.deadline = time.monotonic() + timeout
        self.stop, self.connected, self.matched, self.data = threading.Event(), False, False, b""

    def run(self):
        s = connect_unix(self.path, self.deadline - time.monotonic(), self.stop)
        if not s:
            return
        self.connected = True
        s.settimeout(0.2)
        if self.greeting:
            s.sendall(self.greeting.encode())
        with s:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                if self.replied_at and time.monotonic() < self.replied_at + self.bulk_delay:
                    time.sleep(0.05)
                    continue
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                self.data += chunk
                m = None if self.matched else self.expect.search(self.data)
                if m:
                    self.matched, self.bulk_from = True, m.end()
                    if self.reply is not None:
                        s.sendall(self.reply.encode() + m.group(0))
                        self.replied_at = time.monotonic()

    def problems(self):
        if not self.connected:
            return [f"socket peer never connected to {self.path}"]
        if not self.matched:
            return [f"socket peer {self.path} never received {self.expect.pattern!r} "
                    f"(got {self.data!r})"]
        return self.bulk_problems()

    def bulk_problems(self):
        if not self.bulk:
            return []
        got = self.data[self.bulk_from:]
        want = bytes(i % 251 for i in range(self.bulk))
        if got != want:
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                         min(len(got), len(want)))
            return [f"socket peer {self.path}: bulk data: {len(got)} bytes, expected {self.bulk}; "
                    f"first difference at byte {first}"]
        return []


def make_peers(test, timeout):
    return [SocketPeer(spec, timeout) for spec in test.get("socket_peers", [])]


def peer_problems(peers):
    return [p for peer in peers for p in peer.problems()]


def run_guest(cmd, test, timeout, peers=()):
    """Run the machine, writing test["input"] to its serial input once the
    console matches test["input_after"], with `peers` (SocketPeer) talking
    to its sockets; returns (status or None on timeout, console, stderr)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    for peer in peers:
        peer.start()
    try:
        return wait_guest(proc, test, timeout)
    finally:
        for peer in peers:
            peer.stop.set()
            peer.join()


def wait_guest(proc, test, timeout):
    """run_guest's loop over the machine's console."""
    pending = test.get("input", "").encode()
    trigger = re.compile(test.get("input_after", "^"), re.MULTILINE)
    out, deadline = b"", time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            proc.wait()
            return None, out.decode(errors="replace"), ""
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        out += chunk
        if pending and trigger.search(out.decode(errors="replace").replace("\r", "")):
            proc.stdin.write(pending)
            proc.stdin.flush()
            pending = b""
    proc.stdin.close()
    err = proc.stderr.read().decode(errors="replace")
    status = proc.wait()
    return status, out.decode(errors="replace").replace("\r", ""), err


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("expectations")
    ap.add_argument("test")
    ap.add_argument("elf")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    args = ap.parse_args()

    with open(args.expectations) as f:
        data = json.load(f)
    conf = data["qemu"]
    with tempfile.TemporaryDirectory(prefix="vmm-guest-") as tmp:
        return run(args, conf, with_dir(data["tests"][args.test], tmp))


def run(args, conf, test):
    if test.get("libvmm_only"):
        print(f"SKIP: {args.test} runs under libvmm only")
        return SKIP

    qemu = shutil.which(args.qemu)
    if not qemu:
        print(f"SKIP: {args.qemu} not found")
        return SKIP
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("SKIP: /dev/kvm is missing or not accessible")
        return SKIP

    workdir = image_workdir(test)
    paths = prepare_images(test, workdir.name) if workdir else {}
    cmd = substitute(qemu_command(qemu, conf, test, args.elf), paths)
    print("+ " + " ".join(cmd), flush=True)
    peers = make_peers(test, conf["timeout_s"])
    status, console, stderr = run_guest(cmd, test, conf["timeout_s"], peers)
    if status is None:
        print(console)
        print(f"FAIL: {args.test}: no exit within {conf['timeout_s']} s (guest hung?)")
        return 1
    print(console, end="" if console.endswith("\n") else "\n")
    if stderr:
        print("qemu stderr:\n" + stderr)
    problems = check(test, status, console) + check_images(test, paths) + peer_problems(peers)
    for p in problems:
        print(f"FAIL: {args.test}: {p}")
    if not problems:
        print(f"PASS: {args.test} (status {status})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
