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
import sys
import tempfile

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


def run_guest(cmd, test, timeout):
    """Run the machine, writing test["input"] to its serial input once the
    console matches test["input_after"]; returns (status or None on
    timeout, console, stderr)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
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
    test = data["tests"][args.test]
    conf = data["qemu"]
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
    status, console, stderr = run_guest(cmd, test, conf["timeout_s"])
    if status is None:
        print(console)
        print(f"FAIL: {args.test}: no exit within {conf['timeout_s']} s (guest hung?)")
        return 1
    print(console, end="" if console.endswith("\n") else "\n")
    if stderr:
        print("qemu stderr:\n" + stderr)
    problems = check(test, status, console) + check_images(test, paths)
    for p in problems:
        print(f"FAIL: {args.test}: {p}")
    if not problems:
        print(f"PASS: {args.test} (status {status})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
