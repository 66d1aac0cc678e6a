"""Damaged qcow2 images: vmm-img check gives the same verdict and exit code
as qemu-img check, repairs leave images qemu-img calls clean, malformed
headers are refused with a clear error, feature bits are honoured."""
import json
import os
import struct

import pytest

from vmmimg_helpers import qemu_img, qemu_io, read_bytes, run, vmm

MiB = 1 << 20


class Image:
    """Just enough qcow2 parsing to damage an image on purpose."""

    def __init__(self, path):
        self.path = path
        h = read_bytes(path)[:112]
        self.version = struct.unpack(">I", h[4:8])[0]
        self.cluster_bits = struct.unpack(">I", h[20:24])[0]
        self.cs = 1 << self.cluster_bits
        self.l1_size, self.l1_off, self.rt_off = struct.unpack(">IQQ", h[36:56])
        self.refcount_order = struct.unpack(">I", h[96:100])[0] if self.version >= 3 else 4
        assert self.refcount_order == 4, "helpers assume 16-bit refcounts"

    def u64(self, off, value=None):
        with open(self.path, "r+b") as f:
            f.seek(off)
            if value is None:
                return struct.unpack(">Q", f.read(8))[0]
            f.write(struct.pack(">Q", value))

    def u32(self, off, value):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(struct.pack(">I", value))

    def l2_table(self, i=0):
        return self.u64(self.l1_off + 8 * i) & 0x00fffffffffffe00

    def l2_entry_off(self, index):
        return self.l2_table() + 8 * index

    def refcount_off(self, cluster):
        per_block = self.cs // 2
        block = self.u64(self.rt_off + 8 * (cluster // per_block))
        assert block
        return block + 2 * (cluster % per_block)

    def set_refcount(self, cluster, value):
        with open(self.path, "r+b") as f:
            f.seek(self.refcount_off(cluster))
            f.write(struct.pack(">H", value))


def check(tool, path, *extra):
    p = run(tool, "check", *extra, path, check=False)
    return p.returncode, p.stdout + p.stderr


def check_json(tool, path):
    p = run(tool, "check", "--output=json", path, check=False)
    try:
        res = json.loads(p.stdout)
    except ValueError:
        res = {}
    return p.returncode, res


def same_verdict(path):
    """Both tools agree on exit code and counts; returns the exit code."""
    qrc, qres = check_json("qemu-img", path)
    vrc, vres = check_json(os.environ.get("VMM_IMG_BIN", vmm_path()), path)
    assert vrc == qrc, (vrc, qrc, qres, vres)
    for key in ("corruptions", "leaks", "check-errors"):
        assert vres.get(key, 0) == qres.get(key, 0), (key, qres, vres)
    return qrc


def vmm_path():
    from vmmimg_helpers import VMM_IMG
    return VMM_IMG


def make(tmp_path, name="c.qcow2", size="8M", opts="cluster_size=64k"):
    path = tmp_path / name
    qemu_img("create", "-f", "qcow2", "-o", opts, path, size)
    qemu_io("qcow2", path, "write -P 1 0 256k", "write -P 2 1M 64k")
    return path


def assert_qemu_clean(path):
    rc, res = check_json("qemu-img", path)
    assert rc == 0, res


def test_leak_found_and_repaired(tmp_path):
    path = make(tmp_path)
    img = Image(path)
    with open(path, "ab") as f:          # one unused cluster that claims a reference
        f.write(bytes(img.cs))
    leaked = os.path.getsize(path) // img.cs - 1
    img.set_refcount(leaked, 1)
    assert same_verdict(path) == 3
    rc, out = check(vmm_path(), path)
    assert "Leaked cluster %d refcount=1 reference=0" % leaked in out
    vmm("check", "-r", "leaks", path)
    assert_qemu_clean(path)


@pytest.mark.parametrize("beyond", [1, 64, 300])
def test_leak_past_end_of_file_found_and_repaired(tmp_path, beyond):
    """Refcounts of clusters past the end of the file (counted ahead, never
    given back): qemu-img check does not look there; vmm-img check reports
    every one, however far past the end (within the refcount blocks), and
    -r leaks drops them all."""
    path = make(tmp_path)
    img = Image(path)
    end = os.path.getsize(path) // img.cs
    leaked = list(range(end + beyond, end + beyond + 3))
    for c in leaked:
        img.set_refcount(c, 1)
    assert_qemu_clean(path)
    rc, out = check(vmm_path(), path)
    assert rc == 3, out
    for c in leaked:
        assert "Leaked cluster %d refcount=1 reference=0" % c in out
    vmm("check", "-r", "leaks", path)
    rc, out = check(vmm_path(), path)
    assert rc == 0 and "No errors were found" in out, out
    for c in leaked:
        with open(path, "rb") as f:
            f.seek(img.refcount_off(c))
            assert f.read(2) == bytes(2), c
    assert_qemu_clean(path)


def test_refcount_too_low_is_corruption(tmp_path):
    path = make(tmp_path)
    img = Image(path)
    before = read_bytes(path)
    data = img.u64(img.l2_entry_off(0)) & 0x00fffffffffffe00
    img.set_refcount(data // img.cs, 0)
    assert same_verdict(path) == 2
    rc, out = check(vmm_path(), path)
    assert "ERROR cluster %d refcount=0 reference=1" % (data // img.cs) in out
    assert "OFLAG_COPIED data cluster" in out
    # a read-write open for writing refuses nothing yet, but repair fixes it
    vmm("check", "-r", "all", path)
    assert_qemu_clean(path)
    qemu_io("qcow2", path, "read -P 1 0 256k", "read -P 2 1M 64k")
    assert len(read_bytes(path)) >= len(before)


def test_overlapping_l2_entries(tmp_path):
    path = make(tmp_path)
    img = Image(path)
    img.u64(img.l2_entry_off(5), img.u64(img.l2_entry_off(1)))
    assert same_verdict(path) == 2
    vmm("check", "-r", "all", path)
    assert_qemu_clean(path)


def test_l2_entry_past_end_of_file(tmp_path):
    path = make(tmp_path)
    img = Image(path)
    far = (os.path.getsize(path) // img.cs + 10) * img.cs
    img.u64(img.l2_entry_off(7), far | (1 << 63))
    assert same_verdict(path) == 2
    rc, out = check(vmm_path(), path)
    assert "exceeding the end of the file" in out
    # qemu-img -r all cannot fix this one; we drop the entry (the data is gone)
    vmm("check", "-r", "all", path)
    assert_qemu_clean(path)
    qemu_io("qcow2", path, "read -P 1 0 256k")


def test_unaligned_l2_entry(tmp_path):
    path = make(tmp_path)
    img = Image(path)
    img.u64(img.l2_entry_off(9), (img.u64(img.l2_entry_off(0)) & ~(1 << 63)) + 512 | (1 << 63))
    assert same_verdict(path) == 2
    vmm("check", "-r", "all", path)
    assert_qemu_clean(path)


@pytest.mark.parametrize("field,offset,value,words", [
    ("l1_size", 36, 0x7fffffff, "L1"),
    ("refcount_table_clusters", 56, 0x7fffffff, "refcount table"),
    ("nb_snapshots", 60, 0x7fffffff, "snapshots"),
    ("cluster_bits", 20, 31, "cluster size"),
    ("l1_table_offset", 44, 0x123, "L1"),
])
def test_malformed_header_refused(tmp_path, field, offset, value, words):
    path = make(tmp_path)
    Image(path).u32(offset, value)
    qrc = run("qemu-img", "check", path, check=False).returncode
    p = run(vmm_path(), "check", path, check=False)
    assert p.returncode == qrc == 1, (field, p.returncode, qrc)
    assert words in p.stderr, p.stderr
    p = run(vmm_path(), "info", path, check=False)
    assert p.returncode != 0 and words in p.stderr


def test_huge_snapshot_table_refused(tmp_path):
    path = make(tmp_path)
    vmm("snapshot", "-c", "s", path)
    img = Image(path)
    with open(path, "rb") as f:
        f.seek(64)
        sn_off = struct.unpack(">Q", f.read(8))[0]
    img.u32(sn_off + 36, 0x10000000)         # extra_data_size
    assert run("qemu-img", "info", path, check=False).returncode != 0
    p = run(vmm_path(), "info", path, check=False)
    assert p.returncode != 0 and "snapshot" in p.stderr
    img.u32(sn_off + 36, 24)
    img.u32(sn_off + 8, 0x7fffffff)          # snapshot L1 size
    p = run(vmm_path(), "check", path, check=False)
    assert p.returncode == run("qemu-img", "check", path, check=False).returncode


def feature_table_add(path, bit, name):
    """Set incompatible bit `bit` and give it a name in the feature table."""
    img = Image(path)
    with open(path, "r+b") as f:
        f.seek(72)
        incompat = struct.unpack(">Q", f.read(8))[0] | (1 << bit)
        f.seek(72)
        f.write(struct.pack(">Q", incompat))
        f.seek(100)
        pos = struct.unpack(">I", f.read(4))[0]
        while True:                           # walk to the feature table
            f.seek(pos)
            typ, ln = struct.unpack(">II", f.read(8))
            assert typ != 0, "no feature table"
            if typ == 0x6803f857:
                f.seek(pos + 8 + ln - 48)     # overwrite the last entry
                f.write(struct.pack(">BB46s", 0, bit, name.encode()))
                break
            pos += 8 + (ln + 7) // 8 * 8
    return img


def test_unknown_incompatible_feature_named(tmp_path):
    path = make(tmp_path)
    feature_table_add(path, 5, "frobnication")
    q = run("qemu-img", "info", path, check=False)
    assert q.returncode != 0 and "frobnication" in q.stderr
    p = run(vmm_path(), "info", path, check=False)
    assert p.returncode != 0 and "frobnication" in p.stderr and "5" in p.stderr
    assert run(vmm_path(), "check", path, check=False).returncode == \
        run("qemu-img", "check", path, check=False).returncode


def test_unknown_incompatible_bit_without_name(tmp_path):
    path = make(tmp_path)
    with open(path, "r+b") as f:
        f.seek(72)
        f.write(struct.pack(">Q", 1 << 40))
    p = run(vmm_path(), "info", path, check=False)
    assert p.returncode != 0 and "unknown incompatible feature bit 40" in p.stderr


@pytest.mark.parametrize("bit,words", [(4, "extended L2"), (2, "external data file")])
def test_unsupported_features_refused_by_name(tmp_path, bit, words):
    path = make(tmp_path)
    with open(path, "r+b") as f:
        f.seek(72)
        f.write(struct.pack(">Q", 1 << bit))
    p = run(vmm_path(), "info", path, check=False)
    assert p.returncode != 0 and words in p.stderr


def test_create_refuses_unsupported_options(tmp_path):
    for opts, words in (("extended_l2=on", "extended L2"), ("compression_type=zstd", "zstd"),
                        ("compat=0.10,refcount_bits=8", "refcount")):
        p = run(vmm_path(), "create", "-f", "qcow2", "-o", opts, tmp_path / "x.qcow2", "1M",
                check=False)
        assert p.returncode != 0 and words in p.stderr, (opts, p.stderr)


def test_zstd_image_refused(tmp_path):
    path = tmp_path / "z.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compression_type=zstd", path, "1M")
    p = run(vmm_path(), "info", path, check=False)
    assert p.returncode != 0 and "zstd" in p.stderr


def test_corrupt_bit_refuses_writes_allows_reads(tmp_path):
    path = make(tmp_path)
    with open(path, "r+b") as f:
        f.seek(72)
        f.write(struct.pack(">Q", 2))
    assert vmm("info", path).returncode == 0
    vmm("convert", "-O", "raw", path, tmp_path / "out.raw")
    p = run(vmm_path(), "snapshot", "-c", "x", path, check=False)
    assert p.returncode != 0 and "corrupt" in p.stderr
    assert read_bytes(tmp_path / "out.raw")[:256 * 1024] == b"\1" * 256 * 1024


def test_corruption_found_while_writing_sets_corrupt_bit(tmp_path):
    path = make(tmp_path)
    img = Image(path)
    # an L2 entry that claims the header cluster as guest data
    img.u64(img.l2_entry_off(3), 0 | (1 << 63) | img.cs)
    img.u64(img.l2_entry_off(3), (1 << 63) | 0)
    img.u64(img.l2_entry_off(3), (1 << 63) | img.l1_off)
    from test_qcow2_interop import Blk
    b = Blk(path)
    import ctypes
    buf = ctypes.create_string_buffer(b"x" * 512, 512)
    assert b.lib.vmm_block_write(b.h, 3 * img.cs, buf, 512, 0) != 0
    b.lib.vmm_block_close(b.h)
    q = json.loads(qemu_img("info", "--output=json", "-U", path).stdout)
    assert q["format-specific"]["data"]["corrupt"] is True


def test_unknown_autoclear_bits_cleared_on_write(tmp_path):
    path = make(tmp_path)
    with open(path, "r+b") as f:
        f.seek(88)
        f.write(struct.pack(">Q", 1 << 7))
    vmm("snapshot", "-c", "x", path)
    with open(path, "rb") as f:
        f.seek(88)
        assert struct.unpack(">Q", f.read(8))[0] == 0
    assert_qemu_clean(path)
