"""The public block API (libvmm/block.h) through ctypes: synchronous and
asynchronous I/O, option strings, locking, probing safety, error context."""
import ctypes
import os
import select
import threading

import pytest

from vmmimg_helpers import (VMM_BLOCK_FORCE_SHARE, VMM_BLOCK_RDWR, driver_available, info_json,
                            last_error, lib_handle, map_json, qemu_img, qemu_io, read_bytes, vmm)

MiB = 1 << 20
VMM_BLOCK_NO_BACKING = 2
VMM_BLOCK_IMAGE_OPTS = 32
OP_READ, OP_WRITE, OP_FLUSH, OP_DISCARD, OP_WRITE_ZEROES = range(5)
REQ_MAY_UNMAP = 2

DONE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Request(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("op", ctypes.c_int), ("offset", ctypes.c_uint64),
                ("length", ctypes.c_uint64), ("iov", ctypes.POINTER(IOVec)), ("iovcnt", ctypes.c_int),
                ("flags", ctypes.c_uint), ("done", DONE_FN), ("user_data", ctypes.c_void_p)]


class Extent(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("start", ctypes.c_uint64), ("length", ctypes.c_uint64),
                ("flags", ctypes.c_uint), ("depth", ctypes.c_int), ("offset", ctypes.c_uint64),
                ("filename", ctypes.c_char_p)]


@pytest.fixture
def lib():
    return lib_handle()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", path, "8M")
    qemu_io("raw", path, "write -P 0x5a 1M 1M")
    return path


def open_(lib, spec, fmt=b"raw", flags=0):
    return lib.vmm_block_open(str(spec).encode() if not isinstance(spec, bytes) else spec, fmt, flags)


def test_sync_read_write_seen_by_qemu(lib, image):
    h = open_(lib, image, flags=VMM_BLOCK_RDWR)
    assert h, last_error()
    assert lib.vmm_block_size(h) == 8 * MiB
    buf = ctypes.create_string_buffer(4096)
    assert lib.vmm_block_read(h, 1 * MiB, buf, 4096) == 0
    assert buf.raw == b"\x5a" * 4096
    data = ctypes.create_string_buffer(b"\xc3" * 3000)
    assert lib.vmm_block_write(h, 7777, data, 3000, 0) == 0
    assert lib.vmm_block_close(h) == 0
    out = qemu_io("raw", image, "read -P 0xc3 7777 3000", "read -P 0 0 7777").stdout
    assert "Pattern verification failed" not in out


def test_read_past_end_names_the_call(lib, image):
    h = open_(lib, image)
    buf = ctypes.create_string_buffer(4096)
    assert lib.vmm_block_read(h, 8 * MiB - 100, buf, 4096) == -1
    assert last_error() == ("vmm_block_read: %s: range 8388508+4096 is past the end of the image "
                            "(8388608 bytes)" % image)
    lib.vmm_block_close(h)


def test_write_to_read_only_open_fails(lib, image):
    h = open_(lib, image)
    data = ctypes.create_string_buffer(512)
    assert lib.vmm_block_write(h, 0, data, 512, 0) == -1
    assert last_error() == "vmm_block_write: %s: the image is opened read-only" % image
    lib.vmm_block_close(h)


def test_open_missing_file_error(lib, tmp_path):
    missing = tmp_path / "nope.raw"
    assert not open_(lib, missing)
    assert last_error() == "vmm_block_open: Could not open '%s': No such file or directory" % missing


def test_open_unknown_format_error(lib, image):
    assert not open_(lib, image, fmt=b"vhdx")
    assert last_error() == "vmm_block_open: %s: Unknown driver 'vhdx'" % image


def test_options_string_open(lib, image):
    spec = "driver=raw,file.filename=%s,offset=1M,size=1M" % image
    h = open_(lib, spec, fmt=None)
    assert h, last_error()
    assert lib.vmm_block_size(h) == MiB
    buf = ctypes.create_string_buffer(MiB)
    assert lib.vmm_block_read(h, 0, buf, MiB) == 0
    assert buf.raw == b"\x5a" * MiB
    lib.vmm_block_close(h)


def test_options_string_errors(lib, image):
    spec = "driver=raw,file.filename=%s,bogus=1" % image
    assert not open_(lib, spec, fmt=None)
    assert last_error() == "vmm_block_open: %s: raw: unknown property 'bogus'" % spec
    spec = "driver=raw,file.filename=%s,file.aio=fast" % image
    assert not open_(lib, spec, fmt=None)
    assert last_error() == "vmm_block_open: %s: file: aio: 'fast' is not one of: threads, native" % spec
    spec = "driver=raw,file.filename=%s,offset=1Q" % image
    assert not open_(lib, spec, fmt=None)
    assert last_error() == ("vmm_block_open: %s: raw: offset: '1Q' is not a size: unknown suffix 'Q' "
                            "(use K, M, G, T, P or E)" % spec)


@pytest.mark.parametrize("extra", ["file.aio=native,cache.direct=on", "cache.direct=on",
                                   "file.aio=native"])
def test_native_aio_and_direct_io_unaligned(lib, image, extra):
    spec = "driver=raw,file.filename=%s,%s,read-only=off" % (image, extra)
    h = open_(lib, spec, fmt=None, flags=VMM_BLOCK_RDWR)
    assert h, last_error()
    data = ctypes.create_string_buffer(b"\x17" * 1000)
    assert lib.vmm_block_write(h, 1 * MiB + 3, data, 1000, 0) == 0  # unaligned: bounced
    buf = ctypes.create_string_buffer(4096)
    assert lib.vmm_block_read(h, 1 * MiB, buf, 4096) == 0
    assert buf.raw == b"\x5a" * 3 + b"\x17" * 1000 + b"\x5a" * 3093
    assert lib.vmm_block_close(h) == 0
    assert os.path.getsize(image) == 8 * MiB


def test_two_writers_refused(lib, image):
    h1 = open_(lib, image, flags=VMM_BLOCK_RDWR)
    assert h1
    assert not open_(lib, image, flags=VMM_BLOCK_RDWR)
    assert last_error() == ("vmm_block_open: %s: Failed to get \"write\" lock: is another process "
                            "using the image?" % image)
    assert not open_(lib, image)  # a reader conflicts with the writer...
    assert "Failed to get" in last_error()
    h3 = open_(lib, image, flags=VMM_BLOCK_FORCE_SHARE)  # ...unless force-share
    assert h3, last_error()
    lib.vmm_block_close(h3)
    lib.vmm_block_close(h1)
    h2 = open_(lib, image, flags=VMM_BLOCK_RDWR)
    assert h2, last_error()
    lib.vmm_block_close(h2)


def test_force_share_needs_read_only(lib, image):
    assert not open_(lib, image, flags=VMM_BLOCK_RDWR | VMM_BLOCK_FORCE_SHARE)
    assert last_error() == ("vmm_block_open: %s: force-share can only be used with read-only images"
                            % image)


def _submit_many(lib, h, count, size, write, done):
    bufs = [ctypes.create_string_buffer(bytes([i % 251 + 1]) * size) for i in range(count)]
    iovs = [IOVec(ctypes.cast(b, ctypes.c_void_p), size) for b in bufs]
    for i in range(count):
        req = Request(ctypes.sizeof(Request), OP_WRITE if write else OP_READ, i * size, size,
                      ctypes.pointer(iovs[i]), 1, 0, done, i)
        assert lib.vmm_block_submit(h, ctypes.byref(req)) == 0, last_error()
    return bufs, iovs


def test_async_writes_complete_on_worker_threads(lib, image):
    h = open_(lib, image, flags=VMM_BLOCK_RDWR)
    results, threads, lock = [], set(), threading.Lock()

    def cb(user_data, ret):
        with lock:
            results.append((user_data or 0, ret))
            threads.add(threading.get_ident())
    done = DONE_FN(cb)
    keep = _submit_many(lib, h, 64, 4096, True, done)
    assert lib.vmm_block_drain(h) == 0
    assert sorted(r[0] for r in results) == list(range(64))
    assert all(r[1] == 0 for r in results)
    assert threading.get_ident() not in threads
    assert lib.vmm_block_close(h) == 0
    del keep
    data = read_bytes(image)
    for i in range(64):
        assert data[i * 4096:(i + 1) * 4096] == bytes([i % 251 + 1]) * 4096


def test_async_eventfd_mode_runs_callbacks_in_caller(lib, image):
    h = open_(lib, image)
    fd = lib.vmm_block_completion_fd(h)
    assert fd >= 0
    seen = []
    done = DONE_FN(lambda ud, ret: seen.append((ud or 0, ret, threading.get_ident())))
    keep = _submit_many(lib, h, 32, 64 * 1024, False, done)
    while len(seen) < 32:
        select.select([fd], [], [], 5)
        assert lib.vmm_block_dispatch(h) >= 0
    assert sorted(s[0] for s in seen) == list(range(32))
    assert {s[2] for s in seen} == {threading.get_ident()}
    bufs = keep[0]
    assert bufs[16].raw[:64 * 1024] == b"\x5a" * 65536  # 1 MiB..: qemu-io's pattern
    lib.vmm_block_close(h)


def test_async_error_reaches_callback(lib, image):
    h = open_(lib, image)  # read-only: writes fail in the worker
    errors = []

    def cb(ud, ret):
        errors.append((ret, last_error()))
    done = DONE_FN(cb)
    buf = ctypes.create_string_buffer(512)
    iov = IOVec(ctypes.cast(buf, ctypes.c_void_p), 512)
    req = Request(ctypes.sizeof(Request), OP_WRITE, 0, 512, ctypes.pointer(iov), 1, 0, done, None)
    assert lib.vmm_block_submit(h, ctypes.byref(req)) == 0
    lib.vmm_block_drain(h)
    assert errors == [(-1, "vmm_block_submit: %s: the image is opened read-only" % image)]
    lib.vmm_block_close(h)


def test_discard_and_write_zeroes_deallocate(lib, image):
    h = open_(lib, image, flags=VMM_BLOCK_RDWR)
    assert lib.vmm_block_write_zeroes(h, ctypes.c_uint64(1 * MiB), ctypes.c_uint64(256 * 1024),
                                      REQ_MAY_UNMAP) == 0
    assert lib.vmm_block_discard(h, ctypes.c_uint64(1 * MiB + 512 * 1024), ctypes.c_uint64(512 * 1024)) == 0
    lib.vmm_block_close(h)
    data = read_bytes(image)
    assert data[1 * MiB:1 * MiB + 256 * 1024] == bytes(256 * 1024)
    assert data[1 * MiB + 256 * 1024:1 * MiB + 512 * 1024] == b"\x5a" * (256 * 1024)
    m = map_json(qemu_img, image, "-f", "raw")
    holes = [(e["start"], e["length"]) for e in m if e["zero"]]
    assert any(s <= 1 * MiB and s + n >= 1 * MiB + 256 * 1024 for s, n in holes)


def test_block_status_extent(lib, image):
    h = open_(lib, image)
    ext = Extent(ctypes.sizeof(Extent))
    assert lib.vmm_block_block_status(h, ctypes.c_uint64(1 * MiB), ctypes.c_uint64(4 * MiB),
                                      ctypes.byref(ext)) == 0
    assert (ext.start, ext.length, ext.depth) == (1 * MiB, 1 * MiB, 0)
    assert ext.flags & 1 and not ext.flags & 2  # data, not zero
    assert ext.filename.decode() == str(image)
    lib.vmm_block_close(h)


# ---- probing safety -------------------------------------------------------

def _qcow2_header_disk(tmp_path):
    """A raw disk whose content is a qcow2 image with a backing file: what a
    guest could write to attack format probing on the host."""
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"SECRET" * 1000)
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", secret, "-F", "raw", evil, "1M")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(read_bytes(evil).ljust(4 * MiB, b"\0"))
    return disk, secret


def test_raw_format_given_never_follows_backing(tmp_path):
    disk, secret = _qcow2_header_disk(tmp_path)
    info = info_json(vmm, disk, "-f", "raw", "--backing-chain")
    assert len(info) == 1
    assert info[0]["format"] == "raw"
    assert "backing-filename" not in info[0]
    assert all(e["depth"] == 0 for e in map_json(vmm, disk, "-f", "raw"))
    out = tmp_path / "copy.raw"
    vmm("convert", "-f", "raw", "-O", "raw", disk, out)
    assert read_bytes(out) == read_bytes(disk)
    assert b"SECRET" not in read_bytes(out)


def test_probed_raw_has_no_backing_and_refuses_format_headers(lib, tmp_path):
    disk = tmp_path / "plain.raw"
    qemu_img("create", "-f", "raw", disk, "1M")
    h = open_(lib, disk, fmt=None, flags=VMM_BLOCK_RDWR)
    assert h, last_error()
    header = read_bytes(_qcow2_header_disk(tmp_path)[0])[:4096]
    buf = ctypes.create_string_buffer(header)
    ret = lib.vmm_block_write(h, 0, buf, 4096, 0)
    error = last_error()
    if driver_available("qcow2"):
        assert ret == -1
        assert error == ("vmm_block_write: %s: refusing to write a qcow2 header into a raw image "
                                "whose format was probed (give the format explicitly)" % disk)
    else:
        assert ret == 0  # without a qcow2 driver nothing can probe as qcow2
    lib.vmm_block_close(h)
    h = open_(lib, disk, fmt=b"raw", flags=VMM_BLOCK_RDWR)  # explicit raw: allowed
    assert lib.vmm_block_write(h, 0, buf, 4096, 0) == 0
    lib.vmm_block_close(h)
