"""The nbd block driver against qemu-nbd and nbdkit: contents, maps and
errors match what qemu-img sees through the same servers."""
import os

import pytest

from nbd_helpers import (map_json, map_simplified, nbdkit, qemu_img, qemu_nbd, random_file, run, vmm,
                         vmm_serve)


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def convert_both(src, tmp_path):
    """Copy `src` with vmm-img and with qemu-img; return both contents."""
    a, b = tmp_path / "vmm.raw", tmp_path / "qemu.raw"
    vmm("convert", "-O", "raw", src, a)
    qemu_img("convert", "-O", "raw", src, b)
    return read_all(a), read_all(b)


@pytest.fixture
def qcow2_image(tmp_path):
    img = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", img, "64M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", "-c", "write -P 0x11 10M 64k",
        "-c", "write -z 20M 1M", img)
    return img


def test_qemu_nbd_qcow2_readonly(tmp_path, qcow2_image):
    with qemu_nbd(tmp_path / "q.sock", qcow2_image, "qcow2", "exp", "-r") as srv:
        u = srv.uri("exp")
        info = vmm("info", "--output=json", u).stdout
        assert '"virtual-size": 67108864' in info
        assert map_json(vmm, u) == map_json(qemu_img, u)
        a, b = convert_both(u, tmp_path)
        assert a == b and a[1 << 20] == 0x5a
        vmm("compare", u, qcow2_image)
        # writing to a read-only export is refused at open with a clear message
        p = vmm("convert", "-n", "-O", "raw", qcow2_image, u, check=False)
        assert p.returncode == 1 and "read-only" in p.stderr


def test_qemu_nbd_qcow2_readwrite(tmp_path):
    qcow2_image = tmp_path / "blank.qcow2"
    qemu_img("create", "-f", "qcow2", qcow2_image, "64M")
    src = tmp_path / "src.raw"
    random_file(src, 8 << 20, seed=3)
    with qemu_nbd(tmp_path / "q.sock", qcow2_image, "qcow2", "exp") as srv:
        u = srv.uri("exp")
        vmm("convert", "-n", "-O", "raw", src, u)
        qemu_img("compare", "-f", "raw", src, u)   # qemu sees what we wrote
    # the qcow2 behind the server holds it; the tail of the 64M disk reads zero
    out = tmp_path / "back.raw"
    qemu_img("convert", "-O", "raw", qcow2_image, out)
    data = read_all(out)
    assert data[:8 << 20] == read_all(src)
    assert data[8 << 20:] == bytes(len(data) - (8 << 20))


def test_write_zeroes_trim_flush_fua(tmp_path):
    """Zeroes, trim, FUA and flush reach the server (through libvmm's API)."""
    img = tmp_path / "d.raw"
    random_file(img, 4 << 20, seed=5)
    with qemu_nbd(tmp_path / "q.sock", img, "raw", "", "--discard=unmap") as srv:
        u = srv.uri()
        run("python3", "-c", f"""
import ctypes
lib = ctypes.CDLL({os.path.join(os.environ.get('VMM_BUILD_DIR', 'build'), 'lib', 'libvmm.so.0')!r})
lib.vmm_block_open.restype = ctypes.c_void_p
lib.vmm_block_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
for f in ('vmm_block_write_zeroes', 'vmm_block_discard'):
    getattr(lib, f).argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64] + ([ctypes.c_uint] if 'zero' in f else [])
lib.vmm_block_write.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint]
lib.vmm_block_flush.argtypes = [ctypes.c_void_p]
lib.vmm_block_close.argtypes = [ctypes.c_void_p]
b = lib.vmm_block_open({u!r}.encode(), b'raw', 1)
assert b, 'open failed'
assert lib.vmm_block_write_zeroes(b, 0, 1 << 20, 2) == 0       # may unmap
assert lib.vmm_block_write_zeroes(b, 1 << 20, 65536, 0) == 0   # NO_HOLE
assert lib.vmm_block_discard(b, 2 << 20, 1 << 20) == 0
assert lib.vmm_block_write(b, 3 << 20, b'x' * 512, 512, 1) == 0  # FUA
assert lib.vmm_block_flush(b) == 0
assert lib.vmm_block_close(b) == 0
""")
    data = read_all(img)
    assert data[:(1 << 20) + 65536] == bytes((1 << 20) + 65536)
    assert data[3 << 20:(3 << 20) + 512] == b"x" * 512


def test_options_form(tmp_path, qcow2_image):
    with qemu_nbd(tmp_path / "q.sock", qcow2_image, "qcow2", "exp", "-r") as srv:
        opts = "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=%s,file.export=exp" % srv.sock
        a = tmp_path / "a.raw"
        vmm("convert", "--image-opts", "-O", "raw", opts, a)
        qemu_img("compare", "-f", "raw", a, srv.uri("exp"))
        p = vmm("info", "--image-opts", "driver=nbd,server.type=unix,server.path=%s,export=nope" % srv.sock,
                check=False)
        assert p.returncode == 1 and "nope" in p.stderr and "not available" in p.stderr


def test_nbdkit_memory_and_data(tmp_path):
    with nbdkit(tmp_path / "k.sock", "data", "data=( 0x55 0xaa )*2048 @1048576 ( \"hello\" )*100 @3145728 1",
                "size=4M") as srv:
        u = srv.uri()
        a, b = convert_both(u, tmp_path)
        assert a == b and a[:2] == b"\x55\xaa" and a[1 << 20:(1 << 20) + 5] == b"hello"
        assert map_simplified(map_json(vmm, u)) == map_simplified(map_json(qemu_img, u))
    with nbdkit(tmp_path / "m.sock", "memory", "64M") as srv:
        u = srv.uri()
        src = tmp_path / "s.raw"
        random_file(src, 6 << 20, seed=7)
        vmm("convert", "-n", "-O", "raw", src, u)
        qemu_img("compare", "-f", "raw", src, u)


def test_nbdkit_sparse_random(tmp_path):
    with nbdkit(tmp_path / "k.sock", "sparse-random", "64M", "seed=42") as srv:
        u = srv.uri()
        a, b = convert_both(u, tmp_path)
        assert a == b
        assert map_simplified(map_json(vmm, u)) == map_simplified(map_json(qemu_img, u))
        vmm("compare", u, tmp_path / "qemu.raw")


def test_nbdkit_file_and_simple_replies(tmp_path):
    img = tmp_path / "f.raw"
    random_file(img, 3 << 20, seed=9)
    with nbdkit(tmp_path / "k.sock", "file", str(img), extra=("--no-sr",)) as srv:
        u = srv.uri()
        a, b = convert_both(u, tmp_path)
        assert a == b == read_all(img)
        # without structured replies there is no block status: all data, as qemu sees it
        assert map_simplified(map_json(vmm, u)) == map_simplified(map_json(qemu_img, u))
        assert all(e["data"] for e in map_json(vmm, u))


def test_nbdkit_oldstyle_refused(tmp_path):
    with nbdkit(tmp_path / "k.sock", "memory", "1M", extra=("--oldstyle",)) as srv:
        p = vmm("info", srv.uri(), check=False)
        assert p.returncode == 1 and "oldstyle" in p.stderr


def test_nbdkit_error_filter(tmp_path):
    with nbdkit(tmp_path / "k.sock", "data", "data=( 0x55 )*4194304", "size=8M", "error-pread=EIO", "error-pread-rate=100%",
                extra=("--filter=error",)) as srv:
        u = srv.uri()
        p = vmm("convert", "-f", "raw", "-O", "raw", u, tmp_path / "o.raw", check=False)
        q = qemu_img("convert", "-f", "raw", "-O", "raw", u, tmp_path / "q.raw", check=False)
        assert p.returncode == 1 and q.returncode == 1
        assert "Input/output error" in p.stderr and "read" in p.stderr
        assert "Input/output error" in q.stderr
        # metadata still works: map agrees with qemu-img
        assert map_json(vmm, u, "-f", "raw") == map_json(qemu_img, u, "-f", "raw")


def test_nbdkit_delay_filter(tmp_path):
    """Slow replies with many requests in flight on one connection."""
    with nbdkit(tmp_path / "k.sock", "sparse-random", "16M", "seed=3", "rdelay=20ms", "wdelay=20ms",
                extra=("--filter=delay",)) as srv:
        u = srv.uri()
        a, b = convert_both(u, tmp_path)
        assert a == b


def test_multi_conn_and_round_trip(tmp_path):
    """vmm-img serve advertises multi-conn with -e; our client copies through 4 connections."""
    img = tmp_path / "d.raw"
    random_file(img, 16 << 20, seed=11)
    with vmm_serve(tmp_path / "v.sock", img, "-f", "raw", "-e", "8", "-r") as srv:
        a = tmp_path / "a.raw"
        vmm("convert", "-f", "raw", "-O", "raw", "-m", "16", srv.uri(), a)
        assert read_all(a) == read_all(img)


def test_fua_reaches_the_server_through_a_raw_node(tmp_path):
    """A FUA write on a raw image over NBD is sent with NBD_CMD_FLAG_FUA (the
    raw node passes it down instead of turning it into a flush)."""
    import ctypes
    log = tmp_path / "nbdkit.log"
    sock = tmp_path / "f.sock"
    lib = ctypes.CDLL(os.path.join(os.environ.get("VMM_BUILD_DIR", "build"), "lib", "libvmm.so.0"))
    lib.vmm_block_open.restype = ctypes.c_void_p
    lib.vmm_block_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
    lib.vmm_block_write.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p,
                                    ctypes.c_size_t, ctypes.c_uint]
    lib.vmm_block_close.argtypes = [ctypes.c_void_p]
    with nbdkit(str(sock), "memory", "1M", "logfile=%s" % log, extra=("--filter=log",)):
        h = lib.vmm_block_open(("nbd+unix:///?socket=%s" % sock).encode(), b"raw", 1)
        assert h
        assert lib.vmm_block_write(h, 0, b"f" * 4096, 4096, 1) == 0       # VMM_BLOCK_REQ_FUA
        assert lib.vmm_block_write(h, 4096, b"n" * 4096, 4096, 0) == 0
        lib.vmm_block_close(h)
    writes = [line for line in log.read_text().splitlines() if " Write id=" in line and "offset=" in line]
    assert any("offset=0x0 " in w and "fua=1" in w for w in writes), writes
    assert any("offset=0x1000 " in w and "fua=0" in w for w in writes), writes


def test_cache_sends_nbd_cmd_cache(tmp_path):
    """vmm_block_cache on a raw image over NBD becomes NBD_CMD_CACHE, split
    into chunks the server accepts; against a server without it, a no-op."""
    import ctypes
    log = tmp_path / "nbdkit.log"
    sock = tmp_path / "c.sock"
    lib = ctypes.CDLL(os.path.join(os.environ.get("VMM_BUILD_DIR", "build"), "lib", "libvmm.so.0"))
    lib.vmm_block_open.restype = ctypes.c_void_p
    lib.vmm_block_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
    lib.vmm_block_cache.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
    lib.vmm_block_close.argtypes = [ctypes.c_void_p]
    with nbdkit(str(sock), "memory", "64M", "logfile=%s" % log, extra=("--filter=log",)):
        h = lib.vmm_block_open(("nbd+unix:///?socket=%s" % sock).encode(), b"raw", 0)
        assert h
        assert lib.vmm_block_cache(h, 1 << 20, 40 << 20) == 0
        assert lib.vmm_block_cache(h, 60 << 20, 8 << 20) == -1  # past the end
        lib.vmm_block_close(h)
    caches = [line for line in log.read_text().splitlines() if " Cache id=" in line and "offset=" in line]
    assert len(caches) == 2, caches
    assert "offset=0x100000 count=0x2000000" in caches[0]
    assert "offset=0x2100000 count=0x800000" in caches[1]
