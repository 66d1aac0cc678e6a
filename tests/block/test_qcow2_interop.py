"""qcow2 interoperability with qemu-img / qemu-io in both directions: images
qemu writes read back identically by vmm-img, images vmm-img writes pass
qemu-img check clean and read identically in qemu-img, snapshots, backing
chains, resize, amend, discard and write-zeroes."""
import ctypes
import json
import os
import random

import pytest

from vmmimg_helpers import (VMM_BLOCK_RDWR, info_json, last_error, lib_handle, qemu_img,
                            qemu_io, read_bytes, run, vmm)

MiB = 1 << 20


def raw_of(tool, img, tmp_path, name):
    out = tmp_path / name
    tool("convert", "-O", "raw", img, out)
    return read_bytes(out)


def assert_same_content(img, tmp_path):
    """vmm-img and qemu-img read the same bytes from `img`."""
    ours = raw_of(vmm, img, tmp_path, "ours.raw")
    theirs = raw_of(qemu_img, img, tmp_path, "theirs.raw")
    assert len(ours) == len(theirs)
    assert ours == theirs


def qemu_check_json(img):
    p = run("qemu-img", "check", "--output=json", img, check=False)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}


def assert_qemu_clean(img):
    rc, res = qemu_check_json(img)
    assert rc == 0, res
    assert res.get("corruptions", 0) == 0 and res.get("leaks", 0) == 0, res


def qemu_writes(img, seed=1, size=16 * MiB):
    """A mix of qemu-io writes: patterns, partial clusters, zeroes, discards."""
    rnd = random.Random(seed)
    cmds = []
    for _ in range(12):
        off = rnd.randrange(0, size - 300 * 1024) & ~511
        ln = rnd.choice([512, 4096, 70000 & ~511, 200 * 1024])
        cmds.append("write -P %d %d %d" % (rnd.randrange(1, 255), off, ln))
    cmds.append("write -z %d %d" % (2 * MiB, MiB))
    cmds.append("discard %d %d" % (4 * MiB, MiB))
    cmds.append("write -P 7 %d 1234" % (size - 4096))
    qemu_io("qcow2", img, *cmds)


QEMU_VARIANTS = [
    ("0.10", 65536, 16),
    ("1.1", 512, 16),
    ("1.1", 65536, 1),
    ("1.1", 65536, 64),
    ("1.1", 2 * MiB, 16),
    ("0.10", 512, 16),
]


@pytest.mark.parametrize("compat,cluster,refbits", QEMU_VARIANTS)
def test_qemu_written_images_read_identically(tmp_path, compat, cluster, refbits):
    img = tmp_path / "q.qcow2"
    qemu_img("create", "-f", "qcow2", "-o",
             "compat=%s,cluster_size=%d,refcount_bits=%d" % (compat, cluster, refbits), img, "16M")
    qemu_writes(img)
    assert_same_content(img, tmp_path)
    assert vmm("check", img).returncode == 0


def test_compressed_images_from_qemu(tmp_path):
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        rnd = random.Random(5)
        for i in range(256):
            f.write(bytes([rnd.randrange(4) + 65]) * 4096 if i % 3 else os.urandom(4096))
    for cluster in ("512", "64k", "2M"):
        img = tmp_path / ("c%s.qcow2" % cluster)
        qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=" + cluster, src, img)
        assert vmm("compare", src, img).returncode == 0
        assert raw_of(vmm, img, tmp_path, "c.raw") == read_bytes(src)


@pytest.mark.parametrize("opts", ["compat=1.1", "compat=0.10", "cluster_size=512",
                                  "cluster_size=2M", "refcount_bits=1", "refcount_bits=64",
                                  "lazy_refcounts=on"])
def test_vmm_written_images_pass_qemu_check(tmp_path, opts):
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(3 * MiB))
        f.write(b"\0" * 2 * MiB)
        f.write(b"abc" * 100000)
    img = tmp_path / "v.qcow2"
    vmm("convert", "-O", "qcow2", "-o", opts, src, img)
    assert_qemu_clean(img)
    assert qemu_img("compare", src, img).returncode == 0
    img2 = tmp_path / "vc.qcow2"
    vmm("convert", "-c", "-O", "qcow2", "-o", opts, src, img2)
    assert_qemu_clean(img2)
    assert qemu_img("compare", src, img2).returncode == 0


def test_info_json_agrees_with_qemu(tmp_path):
    for opts in ("compat=1.1,lazy_refcounts=on,refcount_bits=8", "compat=0.10",
                 "cluster_size=4k"):
        img = tmp_path / "i.qcow2"
        vmm("create", "-f", "qcow2", "-o", opts, img, "10M")
        ours, theirs = info_json(vmm, img), info_json(qemu_img, img)
        for key in ("virtual-size", "cluster-size", "format", "dirty-flag"):
            assert ours[key] == theirs[key], key
        assert ours["format-specific"] == theirs["format-specific"]


class Blk:
    """A libvmm block handle through ctypes."""

    def __init__(self, path, rw=True):
        self.lib = lib_handle()
        self.lib.vmm_block_discard.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
        self.lib.vmm_block_write_zeroes.argtypes = [ctypes.c_void_p, ctypes.c_uint64,
                                                    ctypes.c_uint64, ctypes.c_uint]
        self.h = self.lib.vmm_block_open(str(path).encode(), b"qcow2", VMM_BLOCK_RDWR if rw else 0)
        assert self.h, last_error()

    def write(self, off, data, flags=0):
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        assert self.lib.vmm_block_write(self.h, off, buf, len(data), flags) == 0, last_error()

    def read(self, off, n):
        buf = ctypes.create_string_buffer(n)
        assert self.lib.vmm_block_read(self.h, off, buf, n) == 0, last_error()
        return buf.raw

    def discard(self, off, n):
        assert self.lib.vmm_block_discard(self.h, off, n) == 0, last_error()

    def zeroes(self, off, n, flags=0):
        assert self.lib.vmm_block_write_zeroes(self.h, off, n, flags) == 0, last_error()

    def close(self):
        assert self.lib.vmm_block_close(self.h) == 0, last_error()


def test_api_writes_read_back_by_qemu(tmp_path):
    img = tmp_path / "w.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4k", img, "8M")
    b = Blk(img)
    b.write(1000, b"x" * 5000)               # partial clusters on both ends (COW)
    b.write(3 * MiB, os.urandom(300000))
    b.write(6 * MiB + 17, b"\xff" * 3)
    b.zeroes(3 * MiB + 8192, 65536, 2)        # MAY_UNMAP: zero clusters
    b.zeroes(3 * MiB + 100000, 65536)         # zero flag, keep allocation
    b.discard(3 * MiB + 200000 & ~4095, 32768)
    data = b.read(0, 8 * MiB)
    b.close()
    assert_qemu_clean(img)
    assert raw_of(qemu_img, img, tmp_path, "q.raw") == data
    assert data[1000:6000] == b"x" * 5000 and data[999] == 0
    assert data[3 * MiB + 8192:3 * MiB + 8192 + 65536] == bytes(65536)


def test_discard_frees_clusters(tmp_path):
    img = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", img, "64M")
    qemu_io("qcow2", img, "write -P 3 0 32M")
    before = qemu_check_json(img)[1]["allocated-clusters"]
    b = Blk(img)
    b.discard(0, 16 * MiB)
    b.close()
    rc, res = qemu_check_json(img)
    assert rc == 0 and res["allocated-clusters"] == before - 256
    # freed clusters are reused by later writes: the file does not grow
    size = os.path.getsize(img)
    b = Blk(img)
    b.write(40 * MiB, b"r" * (8 * MiB))
    b.close()
    assert os.path.getsize(img) <= size
    assert_qemu_clean(img)


def test_backing_chain_three_deep(tmp_path):
    base = tmp_path / "base.raw"
    with open(base, "wb") as f:
        f.write(os.urandom(8 * MiB))
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "raw", mid)
    qemu_io("qcow2", mid, "write -P 1 1M 1M", "write -z 3M 64k")
    vmm("create", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
    assert info_json(qemu_img, top)["backing-filename-format"] == "qcow2"
    qemu_io("qcow2", top, "write -P 2 1536k 100k", "discard 5M 1M")
    assert_same_content(top, tmp_path)
    b = Blk(top)
    b.write(7 * MiB + 100, b"partial")        # COW from the raw base
    b.close()
    assert_qemu_clean(top)
    assert_same_content(top, tmp_path)


def test_snapshots_across_tools(tmp_path):
    img = tmp_path / "s.qcow2"
    qemu_img("create", "-f", "qcow2", img, "16M")
    qemu_io("qcow2", img, "write -P 1 0 4M")
    vmm("snapshot", "-c", "ours", img)
    assert_qemu_clean(img)
    qemu_io("qcow2", img, "write -P 2 1M 2M")
    qemu_img("snapshot", "-c", "theirs", img)
    qemu_io("qcow2", img, "write -P 3 0 1M")
    listed = vmm("snapshot", "-l", img).stdout
    assert "ours" in listed and "theirs" in listed
    assert "ours" in qemu_img("snapshot", "-l", img).stdout
    qemu_img("snapshot", "-a", "ours", img)
    qemu_io("qcow2", img, "read -P 1 0 4M")
    vmm("snapshot", "-a", "theirs", img)
    assert_qemu_clean(img)
    qemu_io("qcow2", img, "read -P 1 0 1M", "read -P 2 1M 2M", "read -P 1 3M 1M")
    vmm("snapshot", "-d", "ours", img)
    assert_qemu_clean(img)
    assert "ours" not in qemu_img("snapshot", "-l", img).stdout
    b = Blk(img)
    b.write(1 * MiB, b"z" * 70000)            # COW of clusters shared with 'theirs'
    b.close()
    assert_qemu_clean(img)
    qemu_img("snapshot", "-a", "theirs", img)
    qemu_io("qcow2", img, "read -P 2 1M 2M")
    vmm("snapshot", "-d", "theirs", img)
    assert_qemu_clean(img)


def test_snapshot_refused_with_one_bit_refcounts(tmp_path):
    img = tmp_path / "r1.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "refcount_bits=1", img, "4M")
    qemu_io("qcow2", img, "write 0 1M")
    p = vmm("snapshot", "-c", "x", img, check=False)
    assert p.returncode != 0 and "refcount" in p.stderr
    assert_qemu_clean(img)


def test_resize_grow_and_shrink(tmp_path):
    img = tmp_path / "r.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", img, "1M")
    qemu_io("qcow2", img, "write -P 5 0 1M")
    vmm("resize", img, "300M")                # needs a bigger L1 table
    assert_qemu_clean(img)
    assert info_json(qemu_img, img)["virtual-size"] == 300 * MiB
    qemu_io("qcow2", img, "read -P 5 0 1M", "read -P 0 1M 1M")
    assert vmm("resize", img, "512k", check=False).returncode != 0   # needs --shrink
    vmm("resize", "--shrink", img, "512k")
    assert_qemu_clean(img)
    qemu_io("qcow2", img, "read -P 5 0 512k")
    assert info_json(qemu_img, img)["virtual-size"] == 512 * 1024


def test_amend_compat_both_ways(tmp_path):
    img = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", img, "8M")
    qemu_io("qcow2", img, "write -P 9 0 2M", "write -z 512k 256k", "write -z 4M 64k")
    before = raw_of(qemu_img, img, tmp_path, "b.raw")
    vmm("amend", "-o", "compat=0.10", img)
    assert info_json(qemu_img, img)["format-specific"]["data"]["compat"] == "0.10"
    assert_qemu_clean(img)
    assert raw_of(qemu_img, img, tmp_path, "a.raw") == before
    vmm("amend", "-o", "compat=1.1,lazy_refcounts=on", img)
    data = info_json(qemu_img, img)["format-specific"]["data"]
    assert data["compat"] == "1.1" and data["lazy-refcounts"] is True
    assert_qemu_clean(img)
    assert raw_of(qemu_img, img, tmp_path, "c.raw") == before


def test_lazy_refcounts_dirty_image_repaired_on_open(tmp_path):
    img = tmp_path / "l.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "8M")
    run("qemu-io", "-c", "write -P 4 0 1M", "-c", "abort", img, check=False)
    assert info_json(qemu_img, img, "-U")["dirty-flag"] is True
    vmm("snapshot", "-c", "after", img)       # a read-write open repairs first
    assert info_json(qemu_img, img)["dirty-flag"] is False
    assert_qemu_clean(img)
    qemu_io("qcow2", img, "read -P 4 0 1M")


def test_lazy_refcounts_written_by_us(tmp_path):
    img = tmp_path / "lz.qcow2"
    vmm("create", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "8M")
    b = Blk(img)
    b.write(0, b"q" * 300000)
    b.close()
    assert info_json(qemu_img, img)["dirty-flag"] is False
    assert_qemu_clean(img)


def test_make_empty_and_commit(tmp_path):
    base = tmp_path / "cb.qcow2"
    top = tmp_path / "ct.qcow2"
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_io("qcow2", base, "write -P 1 0 4M")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io("qcow2", top, "write -P 2 1M 1M")
    vmm("commit", top)
    assert_qemu_clean(base)
    assert_qemu_clean(top)
    qemu_io("qcow2", base, "read -P 1 0 1M", "read -P 2 1M 1M")


def test_measure_matches_qemu(tmp_path):
    src = tmp_path / "m.qcow2"
    qemu_img("create", "-f", "qcow2", src, "64M")
    qemu_io("qcow2", src, "write -P 1 0 3M", "write -z 8M 1M", "write -P 2 20M 100k")
    cases = [["--size", "1G"], ["-o", "cluster_size=512,refcount_bits=1", "--size", "3G"],
             ["-o", "preallocation=full", "--size", "100M"], [src],
             ["-o", "cluster_size=2M", src]]
    for args in cases:
        def sizes(tool):
            out = json.loads(tool("measure", "--output=json", "-O", "qcow2", *args).stdout)
            return out["required"], out["fully-allocated"]
        assert sizes(vmm) == sizes(qemu_img), args


def test_persistent_bitmaps_counted_then_dropped(tmp_path):
    img = tmp_path / "bm.qcow2"
    qemu_img("create", "-f", "qcow2", img, "16M")
    qemu_io("qcow2", img, "write -P 1 0 1M")
    qemu_img("bitmap", "--add", img, "b0")
    qemu_img("bitmap", "--add", "-g", "512", img, "b1")
    qemu_io("qcow2", img, "write -P 2 0 64k")
    assert vmm("check", img).returncode == 0          # bitmap clusters are references
    p = vmm("resize", img, "20M")                      # read-write: bitmaps dropped
    assert "bitmaps" in p.stderr
    assert "bitmaps" not in json.dumps(info_json(qemu_img, img)["format-specific"])
    assert_qemu_clean(img)
    qemu_io("qcow2", img, "read -P 2 0 64k", "read -P 1 64k 960k")


def test_cache_options_and_encryption_refused(tmp_path):
    img = tmp_path / "co.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", img, "32M")
    qemu_io("qcow2", img, "write -P 6 0 8M")
    spec = "driver=qcow2,file.filename=%s,l2-cache-size=4k,refcount-cache-size=2k" % img
    b = lib_handle().vmm_block_open(spec.encode(), None, VMM_BLOCK_RDWR)
    assert b, last_error()
    buf = ctypes.create_string_buffer(MiB)
    for off in range(0, 8 * MiB, MiB):     # tiny caches: many evictions
        assert lib_handle().vmm_block_read(b, off, buf, MiB) == 0
        assert buf.raw == b"\6" * MiB
    assert lib_handle().vmm_block_close(b) == 0
    bad = "driver=qcow2,file.filename=%s,l2-cache-size=lots" % img
    assert not lib_handle().vmm_block_open(bad.encode(), None, 0)
    with open(img, "r+b") as f:                 # crypt_method = AES
        f.seek(32)
        f.write(b"\0\0\0\1")
    p = vmm("info", img, check=False)
    assert p.returncode != 0 and "encrypt" in p.stderr


@pytest.mark.parametrize("compat,cluster,refbits", [("1.1", 4096, 16), ("0.10", 512, 16),
                                                    ("1.1", 65536, 8), ("1.1", 1024, 64)])
def test_random_operations_against_a_model(tmp_path, compat, cluster, refbits):
    """Random writes, zeroes, discards and compressed writes through the API
    on an image with a backing file, checked byte for byte against a model,
    by qemu-img after every round, and across a snapshot."""
    size = 2 * MiB
    rnd = random.Random(cluster * 7 + refbits)
    base = tmp_path / "base.raw"
    backing = bytearray(os.urandom(size))
    base.write_bytes(bytes(backing))
    img = tmp_path / "r.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "raw", "-o",
             "compat=%s,cluster_size=%d,refcount_bits=%d" % (compat, cluster, refbits), img)
    model = bytearray(backing)
    for rnd_no in range(4):
        b = Blk(img)
        for _ in range(40):
            op = rnd.randrange(5)
            off = rnd.randrange(size)
            ln = min(size - off, rnd.choice([1, 511, 512, cluster, 3 * cluster + 17, 70000]))
            if op <= 1:
                data = bytes([rnd.randrange(256)]) * ln
                b.write(off, data)
                model[off:off + ln] = data
            elif op == 2:
                b.zeroes(off, ln, rnd.choice([0, 2]))
                model[off:off + ln] = bytes(ln)
            elif op == 3:
                start = (off + cluster - 1) // cluster * cluster
                end = (off + ln) // cluster * cluster
                b.discard(off, ln)
                for c in range(start, end, cluster):
                    model[c:c + cluster] = bytes(cluster) if compat == "1.1" \
                        else backing[c:c + cluster]
            else:
                c = off // cluster * cluster
                data = (b"%d" % rnd.randrange(10)) * (cluster // 2) + os.urandom(cluster // 2)
                data = data[:cluster]
                b.write(c, data, 8)                     # VMM_BLOCK_REQ_COMPRESSED
                model[c:c + cluster] = data
        assert b.read(0, size) == bytes(model)
        b.close()
        rc, res = qemu_check_json(img)
        assert rc == 0 and res.get("leaks", 0) == 0, (rnd_no, res)
        assert raw_of(qemu_img, img, tmp_path, "q.raw") == bytes(model)
        if rnd_no == 1 and refbits > 1:
            vmm("snapshot", "-c", "mid", img)
            snap_model = bytes(model)
    if refbits > 1:
        qemu_img("snapshot", "-a", "mid", img)
        assert raw_of(vmm, img, tmp_path, "s.raw") == snap_model
        assert_qemu_clean(img)
