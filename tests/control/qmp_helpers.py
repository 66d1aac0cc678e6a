"""Shared by the QMP tests: start vmm-run (or QEMU) with a QMP socket on the
long-running pio-loop guest, and the libvmm package's QMP client."""
import importlib.util
import os
import socket
import subprocess
import tempfile
import time

import pytest

BUILD = os.environ.get("VMM_BUILD_DIR", "build")

# The package's QMP client, loaded by path: it needs no libvmm.so in this
# process (so these tests also run against sanitizer builds).
_spec = importlib.util.spec_from_file_location(
    "libvmm_qmp", os.path.join(BUILD, "bindings", "python", "libvmm", "qmp.py"))
_qmp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_qmp)
QMPClient, QMPError = _qmp.QMPClient, _qmp.QMPError

VMM_RUN = os.path.join(BUILD, "tools", "vmm-run", "vmm-run")
GUESTS = os.path.join(BUILD, "tests", "guest")
LOOP = os.path.join(GUESTS, "pio-loop.elf")
EXIT_DEV = "isa-debug-exit,iobase=0xf4,iosize=4"

needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                               reason="/dev/kvm is missing or not accessible")


class Server:
    """A process serving QMP on self.path; stopped (and reaped) on exit."""

    def __init__(self, argv, path):
        self.path = path
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and self.proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)

    def raw(self):
        """A plain socket connected to the server (greeting unread)."""
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.path)
        return s

    def client(self, negotiate=True):
        if self.proc.poll() is not None:
            raise RuntimeError("server exited: %s" % self.proc.stderr.read())
        return QMPClient(self.path, negotiate=negotiate)

    def wait(self, timeout=30):
        return self.proc.wait(timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: sanitizers still report at exit
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        errors = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        for marker in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            assert marker not in errors, errors
        return False


def vmm_run(tmpdir, *extra, guest=LOOP, cmdline="count=100000000"):
    path = os.path.join(tmpdir, "vmm.qmp")
    argv = [VMM_RUN, "--kernel", guest, "--append", cmdline, "--device", EXIT_DEV,
            "--serial", "none", "--qmp", "unix:%s,server,nowait" % path, *extra]
    return Server(argv, path)


def qemu(tmpdir, guest=LOOP, cmdline="count=100000000"):
    path = os.path.join(tmpdir, "qemu.qmp")
    argv = ["qemu-system-x86_64", "-machine", "microvm,rtc=on,acpi=on", "-enable-kvm",
            "-cpu", "host,-arch-capabilities", "-nodefaults", "-nographic", "-m", "256M",
            "-kernel", guest, "-append", cmdline, "-device", EXIT_DEV, "-serial", "none",
            "-qmp", "unix:%s,server=on,wait=off" % path]
    return Server(argv, path)


def tmpdir():
    return tempfile.TemporaryDirectory(prefix="vmm-qmp-")
