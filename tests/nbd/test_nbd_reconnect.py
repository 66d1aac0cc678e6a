"""reconnect-delay: the server is killed and restarted in the middle of a
copy; the client waits, reconnects, resends and the copy completes."""
import signal
import subprocess
import threading
import time

from nbd_helpers import VMM_IMG, nbdkit, random_file, vmm


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def test_server_restart_mid_copy(tmp_path):
    src = tmp_path / "src.raw"
    random_file(src, 24 << 20, seed=4)
    sock = tmp_path / "k.sock"
    server_args = ("file", str(src), "rdelay=300ms")
    srv = nbdkit(sock, *server_args, extra=("--filter=delay",))
    out = tmp_path / "out.raw"
    opts = ("driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=%s,"
            "file.reconnect-delay=30" % sock)
    copy = subprocess.Popen([VMM_IMG, "convert", "-m", "1", "--image-opts", "-O", "raw", opts, str(out)],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert copy.poll() is None, "the copy ended before the server went away"
    srv.stop(signal.SIGKILL)                # no clean disconnect
    time.sleep(1.5)
    assert copy.poll() is None, "the copy failed instead of waiting: " + copy.stderr.read()
    srv = nbdkit(sock, *server_args, extra=("--filter=delay",))
    try:
        assert copy.wait(120) == 0, copy.stderr.read()
    finally:
        srv.stop()
    assert read_all(out) == read_all(src)


def test_no_reconnect_fails_clearly(tmp_path):
    src = tmp_path / "src.raw"
    random_file(src, 8 << 20, seed=4)
    sock = tmp_path / "k.sock"
    srv = nbdkit(sock, "file", str(src), "rdelay=300ms", extra=("--filter=delay",))
    copy = subprocess.Popen([VMM_IMG, "convert", "-m", "1", "-f", "raw", "-O", "raw",
                             "nbd+unix:///?socket=%s" % sock, str(tmp_path / "o.raw")],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    srv.stop(signal.SIGKILL)
    assert copy.wait(30) == 1
    err = copy.stderr.read()
    assert "closed the connection" in err or "not connected" in err, err
