"""Shared helpers for the NBD tests: starting qemu-nbd, nbdkit and
`vmm-img serve` on Unix sockets, running vmm-img / qemu-img against them."""
import json
import os
import signal
import socket
import subprocess
import time

BUILD = os.environ.get("VMM_BUILD_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "build")
VMM_IMG = os.path.join(BUILD, "tools", "vmm-img", "vmm-img")


def run(*args, check=True, timeout=120):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (args, p.returncode, p.stdout, p.stderr))
    return p


def vmm(*args, check=True, timeout=120):
    return run(VMM_IMG, *args, check=check, timeout=timeout)


def qemu_img(*args, check=True):
    return run("qemu-img", *args, check=check)


def uri(sock, export=""):
    return "nbd+unix:///%s?socket=%s" % (export, sock)


def wait_socket(path, proc, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError("server exited early: %s" % (proc.stderr.read() if proc.stderr else ""))
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(path))
                s.close()
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise AssertionError("server socket %s never appeared" % path)


class Server:
    """A server process on a Unix socket, stopped on exit."""

    def __init__(self, argv, sock, probe=True, ready_file=None):
        self.sock = str(sock)
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        if ready_file:
            # The server says it listens (a probe connection would take a
            # client slot the test may need).
            end = time.time() + 10
            while not os.path.exists(ready_file) and time.time() < end:
                if self.proc.poll() is not None:
                    raise AssertionError("server exited early: %s" % self.proc.stderr.read())
                time.sleep(0.02)
            assert os.path.exists(ready_file), "server never wrote %s" % ready_file
        elif probe:
            wait_socket(self.sock, self.proc)
        else:
            end = time.time() + 10
            while not os.path.exists(self.sock) and time.time() < end:
                time.sleep(0.05)

    def uri(self, export=""):
        return uri(self.sock, export)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self):
        return self.proc.stderr.read() if self.proc.stderr else ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def qemu_nbd(sock, image, fmt="raw", export="", *extra):
    return Server(["qemu-nbd", "-t", "-k", sock, "-f", fmt, "-x", export, *extra, image], sock)


def nbdkit(sock, *plugin_args, extra=()):
    return Server(["nbdkit", "-f", "-U", sock, *extra, *plugin_args], sock)


def vmm_serve(sock, image, *extra):
    # -t: persistent; readiness from --pid-file, written once it listens
    pid_file = str(sock) + ".pid"
    if os.path.exists(pid_file):
        os.unlink(pid_file)
    return Server([VMM_IMG, "serve", "-t", "-k", sock, "--pid-file", pid_file, *extra, image], sock,
                  ready_file=pid_file)


def map_json(tool, target, *extra):
    return json.loads(tool("map", "--output=json", *extra, target).stdout)


def map_simplified(entries):
    """Map entries merged where data/zero agree (servers may split differently)."""
    out = []
    for e in entries:
        key = (e["data"], e["zero"])
        if out and out[-1][2] == key and out[-1][0] + out[-1][1] == e["start"]:
            out[-1][1] += e["length"]
        else:
            out.append([e["start"], e["length"], key])
    return out


def random_file(path, size, seed=1):
    import random
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rnd.randbytes(n))
            left -= n
