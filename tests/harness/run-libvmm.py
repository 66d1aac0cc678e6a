#!/usr/bin/python3
"""Boot one test guest through libvmm's public API and check it against
tests/guest/expectations.json (the same data run-qemu.py checks QEMU with).

Usage: run-libvmm.py EXPECTATIONS_JSON TEST_NAME GUEST_ELF BOOT_GUEST
Exit status: 0 pass, 1 fail, 77 skip (no usable /dev/kvm).
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))


def load_runner():
    path = os.path.join(HERE, "..", "guest", "run-qemu.py")
    spec = importlib.util.spec_from_file_location("run_qemu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    expectations, name, elf, boot_guest = sys.argv[1:5]
    with open(expectations) as f:
        data = json.load(f)
    runner = load_runner()
    with tempfile.TemporaryDirectory(prefix="vmm-guest-") as tmp:
        return run(runner, data, name, runner.with_dir(data["tests"][name], tmp), elf, boot_guest)


def vmm_img_checks(test, paths, boot_guest):
    """Every qcow2 image must also pass `vmm-img check` with no leaks: it
    counts refcounts past the end of the file, which qemu-img check skips
    (clusters counted ahead for writes and never given back)."""
    build = os.environ.get("VMM_BUILD_DIR") or os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(boot_guest))))
    vmm_img = os.path.join(build, "tools", "vmm-img", "vmm-img")
    problems = []
    for name, image in test.get("images", {}).items():
        if image["format"] != "qcow2":
            continue
        cmd = [vmm_img, "check", "-f", "qcow2", paths[name]]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or "No errors were found" not in proc.stdout:
            problems.append(f"image check {' '.join(cmd)!r} (status {proc.returncode}): "
                            f"{proc.stdout.strip()}")
        else:
            print(f"image check ok: {' '.join(cmd)}")
    return problems


def run(runner, data, name, test, elf, boot_guest):
    if test.get("qemu_only"):
        print(f"SKIP: {name} runs under QEMU only ({test.get('qemu_machine', '')})")
        return SKIP
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("SKIP: /dev/kvm is missing or not accessible")
        return SKIP
    timeout = data["qemu"]["timeout_s"]
    cmd = [boot_guest, elf, str(test["cpus"]), test["memory"], test.get("cmdline", ""), str(timeout)]
    if not test.get("test_exit_device", True):
        cmd.append("no-exit-device")
    if "machine" in test:
        cmd.append("machine=" + test["machine"])
    cmd += ["drive=" + d for d in test.get("drives", [])]
    cmd += ["chardev=" + c for c in test.get("chardevs", [])]
    cmd += ["device=" + d for d in test.get("devices", [])]
    if "libvmm_log" in test:
        cmd.append("log")
    workdir = runner.image_workdir(test)
    paths = runner.prepare_images(test, workdir.name) if workdir else {}
    cmd = runner.substitute(cmd, paths)
    print("+ " + " ".join(cmd), flush=True)
    peers = runner.make_peers(test, timeout + 30)
    status, console, stderr = runner.run_guest(cmd, test, timeout + 30, peers)
    if status is None:
        print(console)
        print(f"FAIL: {name}: boot-guest did not finish within {timeout + 30} s")
        return 1
    print(console, end="" if console.endswith("\n") else "\n")
    if stderr:
        print("stderr:\n" + stderr)
    problems = runner.check(test, status, console) + runner.check_images(test, paths)
    problems += vmm_img_checks(test, paths, boot_guest)
    problems += runner.peer_problems(peers)
    log = stderr
    for pattern in test.get("libvmm_log", []):
        if not re.search(pattern, log, re.MULTILINE):
            problems.append(f"libvmm's log does not match {pattern!r}")
    for p in problems:
        print(f"FAIL: {name}: {p}")
    if not problems:
        print(f"PASS: {name} (status {status})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
