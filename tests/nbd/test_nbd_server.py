"""vmm-img serve (libvmm's NBD server) against libnbd's tools and qemu-img."""
import json
import os
import socket
import subprocess
import time

from nbd_helpers import (VMM_IMG, Server, map_json, map_simplified, qemu_img, random_file, run, vmm,
                         vmm_serve)


# nbdsh runs whatever python3 is first in PATH; Debian's module is for /usr/bin/python3
NBDSH = ["/usr/bin/python3", "-m", "nbd"]


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def sparse_image(tmp_path):
    img = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", img, "64M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", "-c", "write -P 0x11 10M 64k",
        "-c", "write -z 20M 1M", img)
    return img


def test_nbdinfo(tmp_path):
    img = sparse_image(tmp_path)
    with vmm_serve(tmp_path / "v.sock", img, "-f", "qcow2", "-x", "disk", "-D", "a test disk", "-r") as srv:
        info = json.loads(run("nbdinfo", "--json", srv.uri("disk")).stdout)
        e = info["exports"][0]
        assert info["protocol"] == "newstyle-fixed" and info["structured"]
        assert e["export-size"] == 64 << 20 and e["is_read_only"]
        assert "base:allocation" in e["contexts"]
        assert e["block_size_minimum"] == 1 and e["block_size_maximum"] == 32 << 20
        # --can: read-only export cannot write, can flush/fua/cache/df
        assert run("nbdinfo", "--can", "flush", srv.uri("disk"), check=False).returncode == 0
        assert run("nbdinfo", "--can", "cache", srv.uri("disk"), check=False).returncode == 0
        assert run("nbdinfo", "--can", "df", srv.uri("disk"), check=False).returncode == 0
        assert run("nbdinfo", "--can", "write", srv.uri("disk"), check=False).returncode == 2
        assert run("nbdinfo", "--can", "multi-conn", srv.uri("disk"), check=False).returncode == 2
        listing = run("nbdinfo", "--list", "--json", srv.uri()).stdout
        assert [x["export-name"] for x in json.loads(listing)["exports"]] == ["disk"]
        assert json.loads(listing)["exports"][0]["description"] == "a test disk"
        # --map matches qemu-img map of the image itself
        m = run("nbdinfo", "--map", "--json", srv.uri("disk")).stdout
        nbd_map = [(x["offset"], x["length"], x["type"] & 1 == 0) for x in json.loads(m)]
        data = [(o, l) for o, l, d in nbd_map if d]
        ref = [(x["start"], x["length"]) for x in map_json(qemu_img, img) if x["data"]]
        assert data == ref


def test_can_flags_writable(tmp_path):
    img = tmp_path / "d.raw"
    qemu_img("create", "-f", "raw", img, "16M")
    with vmm_serve(tmp_path / "v.sock", img, "-f", "raw", "-e", "4", "--discard=unmap") as srv:
        for what in ("write", "trim", "zero", "fast-zero", "fua", "multi-conn"):
            assert run("nbdinfo", "--can", what, srv.uri(), check=False).returncode == 0, what


def test_nbdcopy_both_directions(tmp_path):
    src = tmp_path / "src.raw"
    random_file(src, 32 << 20, seed=2)
    dst = tmp_path / "dst.raw"
    qemu_img("create", "-f", "raw", dst, "32M")
    with vmm_serve(tmp_path / "v.sock", dst, "-f", "raw", "-e", "4") as srv:
        run("nbdcopy", src, srv.uri())              # into the server (multi-conn)
        out = tmp_path / "out.raw"
        run("nbdcopy", srv.uri(), out)              # and back out
    assert read_all(out) == read_all(src) == read_all(dst)


def test_nbdsh_script(tmp_path):
    img = tmp_path / "d.raw"
    qemu_img("create", "-f", "raw", img, "8M")
    script = """
import errno
h.set_request_structured_replies(True)
h.set_strict_mode(0)   # let the server see bad requests
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(URI)
assert h.get_size() == 8 << 20
h.pwrite(b"A" * 4096, 4 << 20, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 4 << 20) == b"A" * 4096
h.zero(1 << 20, 0)
h.zero(65536, 2 << 20, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
h.trim(65536, 3 << 20)
h.cache(65536, 0)
h.flush()
seen = []
h.block_status(8 << 20, 0, lambda ctx, off, ents, err: seen.extend(ents))
assert seen and sum(seen[0::2]) <= 8 << 20
# out of range: an error reply, and the connection goes on
try:
    h.pread(4096, 8 << 20)
    raise SystemExit("read past the end succeeded")
except nbd.Error as e:
    assert "EINVAL" in str(e) and "command failed" in str(e), e
# structured read of a hole is delivered as zeroes
assert h.pread(65536, 5 << 20) == bytes(65536)
assert h.pread(4096, 4 << 20) == b"A" * 4096
assert h.pread(4096, 4096) == bytes(4096)
h.shutdown()
"""
    with vmm_serve(tmp_path / "v.sock", img, "-f", "raw", "--discard=unmap") as srv:
        run(*NBDSH, "-c", "URI=%r" % srv.uri(), "-c", script)
    assert read_all(img)[4 << 20:(4 << 20) + 4096] == b"A" * 4096


def test_qemu_img_through_server(tmp_path):
    img = sparse_image(tmp_path)
    with vmm_serve(tmp_path / "v.sock", img, "-f", "qcow2", "-r", "-e", "2") as srv:
        u = srv.uri()
        info = json.loads(qemu_img("info", "--output=json", u).stdout)
        assert info["virtual-size"] == 64 << 20
        # qemu-img map through our server = qemu-img map of the image (data/zero layout)
        assert map_simplified(map_json(qemu_img, u)) == map_simplified(map_json(qemu_img, img, "-f", "qcow2"))
        assert map_simplified(map_json(vmm, u)) == map_simplified(map_json(qemu_img, u))
        qemu_img("compare", u, img)
        out = tmp_path / "o.qcow2"
        qemu_img("convert", "-O", "qcow2", u, out)
        qemu_img("compare", out, img)


def free_tcp_port():
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_oneshot_pid_file_and_tcp(tmp_path):
    img = tmp_path / "d.raw"
    random_file(img, 1 << 20)
    pid = tmp_path / "serve.pid"
    port = str(free_tcp_port())
    p = subprocess.Popen([VMM_IMG, "serve", "-f", "raw", "-p", port, "--pid-file", str(pid), str(img)],
                         stderr=subprocess.PIPE, text=True)
    end = time.time() + 60
    while not pid.exists() and p.poll() is None and time.time() < end:
        time.sleep(0.05)
    assert pid.exists(), p.stderr.read() if p.poll() is not None else "no pid file within 60 s"
    assert int(pid.read_text()) == p.pid
    out = tmp_path / "o.raw"
    run("nbdcopy", "nbd://127.0.0.1:%s" % port, out)
    assert p.wait(10) == 0          # without -t the server leaves after its client
    assert not pid.exists()
    assert read_all(out) == read_all(img)


def test_detect_zeroes(tmp_path):
    img = tmp_path / "d.raw"
    random_file(img, 4 << 20)
    with vmm_serve(tmp_path / "v.sock", img, "-f", "raw", "--discard=unmap", "--detect-zeroes=unmap") as srv:
        run(*NBDSH, "-u", srv.uri(), "-c", "h.pwrite(bytes(1 << 20), 1 << 20)")
    data = read_all(img)
    assert data[1 << 20:2 << 20] == bytes(1 << 20)
    assert os.stat(img).st_blocks * 512 <= 3 << 20 + 65536   # the range was punched, not written
