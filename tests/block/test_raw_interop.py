"""Raw images: vmm-img against qemu-img / qemu-io on the same files."""
import os
import subprocess
import time

import pytest

from vmmimg_helpers import (info_json, map_json, qemu_img, qemu_io, read_bytes, run, vmm)

MiB = 1 << 20

# Writes that cover aligned and unaligned offsets, short and long runs.
PATTERN_WRITES = [
    "write -P 0xab 0 512",
    "write -P 0x11 1000 3000",
    "write -P 0x22 1M 64k",
    "write -P 0x33 5M 3M",
    "write -P 0x44 12345678 100",
    "write -z 6M 64k",
]


@pytest.fixture
def qemu_raw(tmp_path):
    """A 16 MiB raw image made and written by qemu-img / qemu-io."""
    path = tmp_path / "src.raw"
    qemu_img("create", "-f", "raw", path, "16M")
    qemu_io("raw", path, *PATTERN_WRITES)
    return path


def test_qemu_made_raw_reads_back_identical(qemu_raw, tmp_path):
    out = tmp_path / "copy.raw"
    vmm("convert", "-f", "raw", "-O", "raw", qemu_raw, out)
    assert read_bytes(out) == read_bytes(qemu_raw)
    assert qemu_img("compare", "-f", "raw", "-F", "raw", qemu_raw, out).stdout == "Images are identical.\n"


def test_convert_output_as_sparse_as_qemu(qemu_raw, tmp_path):
    ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
    vmm("convert", "-f", "raw", "-O", "raw", qemu_raw, ours)
    qemu_img("convert", "-f", "raw", "-O", "raw", qemu_raw, theirs)
    strip = lambda m: [{k: v for k, v in e.items()} for e in m]
    assert strip(map_json(qemu_img, ours, "-f", "raw")) == strip(map_json(qemu_img, theirs, "-f", "raw"))
    assert data_extents(ours) == data_extents(theirs)


def data_extents(path):
    """The file's allocated ranges, from SEEK_DATA / SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, off, out = os.fstat(fd).st_size, 0, []
        while off < size:
            try:
                data = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            out.append((data, hole - data))
            off = hole
        return out
    finally:
        os.close(fd)


def test_convert_zero_detection_and_S0(tmp_path):
    src = tmp_path / "zeros.raw"
    qemu_img("create", "-f", "raw", "-o", "preallocation=full", src, "8M")  # zeroes, fully allocated
    qemu_io("raw", src, "write -P 7 2M 4k")
    sparse, full = tmp_path / "sparse.raw", tmp_path / "full.raw"
    vmm("convert", "-f", "raw", "-O", "raw", src, sparse)
    vmm("convert", "-S", "0", "-f", "raw", "-O", "raw", src, full)
    assert read_bytes(sparse) == read_bytes(src) == read_bytes(full)
    assert os.stat(sparse).st_blocks * 512 <= 64 * 1024
    assert os.stat(full).st_blocks * 512 >= 8 * MiB


def test_convert_concatenates_sources(tmp_path):
    parts = []
    for i, size in enumerate(["1M", "3M", "512k"]):
        p = tmp_path / ("part%d.raw" % i)
        qemu_img("create", "-f", "raw", p, size)
        qemu_io("raw", p, "write -P %d 0 4k" % (i + 1), "write -P %d 100k 1k" % (i + 0x40))
        parts.append(p)
    out = tmp_path / "all.raw"
    vmm("convert", "-m", "4", "-W", "-f", "raw", "-O", "raw", *parts, out)
    assert read_bytes(out) == b"".join(read_bytes(p) for p in parts)


def test_convert_n_into_existing_target(qemu_raw, tmp_path):
    target = tmp_path / "target.raw"
    qemu_img("create", "-f", "raw", target, "16M")
    qemu_io("raw", target, "write -P 0x99 0 16M")  # stale content must be overwritten
    vmm("convert", "-n", "-f", "raw", "-O", "raw", qemu_raw, target)
    assert read_bytes(target) == read_bytes(qemu_raw)


def test_info_json_agrees_with_qemu(qemu_raw):
    ours = info_json(vmm, qemu_raw, "-f", "raw")
    theirs = info_json(qemu_img, qemu_raw, "-f", "raw")
    common = set(ours) & set(theirs)
    assert {"virtual-size", "filename", "format", "actual-size", "dirty-flag"} <= common
    assert {k: ours[k] for k in common} == {k: theirs[k] for k in common}


def test_info_human_matches_qemu(qemu_raw):
    ours = vmm("info", "-f", "raw", qemu_raw).stdout
    theirs = qemu_img("info", "-f", "raw", qemu_raw).stdout
    assert ours == theirs


def test_map_agrees_with_qemu(qemu_raw):
    assert map_json(vmm, qemu_raw, "-f", "raw") == map_json(qemu_img, qemu_raw, "-f", "raw")
    assert vmm("map", "-f", "raw", qemu_raw).stdout == qemu_img("map", "-f", "raw", qemu_raw).stdout


def test_map_start_and_length(qemu_raw):
    args = ("--start-offset=1M", "--max-length=6M", "-f", "raw")
    assert map_json(vmm, qemu_raw, *args) == map_json(qemu_img, qemu_raw, *args)


@pytest.mark.parametrize("prealloc", [None, "falloc", "full"])
def test_create_matches_qemu(tmp_path, prealloc):
    ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
    extra = ["-o", "preallocation=" + prealloc] if prealloc else []
    out = vmm("create", "-f", "raw", *extra, ours, "100M").stdout
    assert out.startswith("Formatting '%s', fmt=raw size=104857600" % ours)
    qemu_img("create", "-f", "raw", *extra, theirs, "100M")
    a, b = info_json(qemu_img, ours, "-f", "raw"), info_json(qemu_img, theirs, "-f", "raw")
    del a["filename"], b["filename"]
    if prealloc:
        # A fully allocated file's st_blocks may include the filesystem's own
        # extent blocks, which depend on fragmentation: allow a little slack.
        sizes = a.pop("actual-size"), b.pop("actual-size")
        assert min(sizes) >= 100 << 20 and abs(sizes[0] - sizes[1]) <= 64 << 10, sizes
    assert a == b
    assert map_json(qemu_img, ours, "-f", "raw") == map_json(qemu_img, theirs, "-f", "raw")


def test_size_suffixes(tmp_path):
    for text, size in [("1k", 1024), ("1.5M", 3 << 19), ("2G", 2 << 30), ("4096", 4096)]:
        p = tmp_path / ("s-" + text + ".raw")
        vmm("create", "-q", "-f", "raw", p, text)
        assert os.path.getsize(p) == size


def test_resize_grow_shrink_agree_with_qemu(tmp_path):
    p = tmp_path / "r.raw"
    qemu_img("create", "-f", "raw", p, "10M")
    qemu_io("raw", p, "write -P 5 9M 1M")
    assert vmm("resize", "-f", "raw", p, "+6M").stdout == "Image resized.\n"
    assert info_json(qemu_img, p, "-f", "raw")["virtual-size"] == 16 * MiB
    r = vmm("resize", "-f", "raw", p, "4M", check=False)
    assert r.returncode == 1
    assert r.stderr == "vmm-img: vmm_block_resize: Use the --shrink option to perform a shrink operation.\n"
    assert os.path.getsize(p) == 16 * MiB  # refused: untouched
    vmm("resize", "-f", "raw", "--shrink", p, "-7M")
    assert os.path.getsize(p) == 9 * MiB
    vmm("resize", "-f", "raw", "--preallocation=full", p, "12M")
    assert os.stat(p).st_blocks * 512 >= 3 * MiB
    assert read_bytes(p)[9 * MiB:] == bytes(3 * MiB)


@pytest.mark.parametrize("args", [["--size", "1G"], ["--size", "7M"]])
def test_measure_raw_size_agrees(args):
    assert vmm("measure", "-O", "raw", *args).stdout == qemu_img("measure", "-O", "raw", *args).stdout


def test_measure_raw_image_json_agrees(qemu_raw):
    ours = vmm("measure", "--output=json", "-O", "raw", "-f", "raw", qemu_raw).stdout
    theirs = qemu_img("measure", "--output=json", "-O", "raw", "-f", "raw", qemu_raw).stdout
    assert ours == theirs


def test_compare_exit_codes_and_messages(qemu_raw, tmp_path):
    same = tmp_path / "same.raw"
    vmm("convert", "-f", "raw", "-O", "raw", qemu_raw, same)
    r = vmm("compare", "-f", "raw", qemu_raw, same, check=False)
    assert (r.returncode, r.stdout) == (0, "Images are identical.\n")

    differ = tmp_path / "differ.raw"
    vmm("convert", "-f", "raw", "-O", "raw", qemu_raw, differ)
    qemu_io("raw", differ, "write -P 0x77 1005 1")
    ours = vmm("compare", "-f", "raw", qemu_raw, differ, check=False)
    theirs = qemu_img("compare", "-f", "raw", qemu_raw, differ, check=False)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (1, "Content mismatch at offset 512!\n")

    bigger = tmp_path / "bigger.raw"
    vmm("convert", "-f", "raw", "-O", "raw", qemu_raw, bigger)
    vmm("resize", "-f", "raw", bigger, "+1M")
    for strict in ([], ["-s"]):
        ours = vmm("compare", *strict, "-f", "raw", qemu_raw, bigger, check=False)
        theirs = qemu_img("compare", *strict, "-f", "raw", qemu_raw, bigger, check=False)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    qemu_io("raw", bigger, "write -P 1 16M 4k")
    ours = vmm("compare", "-f", "raw", qemu_raw, bigger, check=False)
    theirs = qemu_img("compare", "-f", "raw", qemu_raw, bigger, check=False)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (
        1, "Warning: Image size mismatch!\nContent mismatch at offset 16777216!\n")

    r = vmm("compare", "-f", "raw", qemu_raw, tmp_path / "missing.raw", check=False)
    assert r.returncode == 2


def test_check_raw_is_not_supported(qemu_raw):
    ours = vmm("check", "-f", "raw", qemu_raw, check=False)
    theirs = qemu_img("check", "-f", "raw", qemu_raw, check=False)
    assert ours.returncode == theirs.returncode == 63
    assert ours.stderr == "vmm-img: This image format does not support checks\n"


@pytest.mark.parametrize("extra", [[], ["-w"], ["-d", "1"], ["-s", "64k", "-d", "32"],
                                   ["-w", "-d", "8", "--flush-interval=10"],
                                   ["-w", "-d", "4", "--flush-interval=8", "--no-drain"],
                                   ["-t", "none", "-n"], ["-t", "none", "-i", "native"]])
def test_bench_runs_and_prints_like_qemu(qemu_raw, extra):
    args = ["bench", "-c", "200", "-f", "raw", *extra, str(qemu_raw)]
    ours = vmm(*args).stdout.splitlines()
    theirs = qemu_img(*args).stdout.splitlines()
    assert ours[:-1] == theirs[:-1]
    assert ours[-1].startswith("Run completed in ") and ours[-1].endswith(" seconds.")


def test_bench_write_pattern_lands(tmp_path):
    p = tmp_path / "b.raw"
    qemu_img("create", "-f", "raw", p, "1M")
    vmm("bench", "-w", "-c", "64", "-d", "8", "--pattern=0x5a", "-s", "4k", "-f", "raw", p)
    data = read_bytes(p)
    assert data[:256 * 1024] == b"\x5a" * (256 * 1024)
    assert data[256 * 1024:] == bytes(768 * 1024)


def _hold_with_qemu_io(path):
    """qemu-io keeps the image open read-write while its stdin stays open."""
    p = subprocess.Popen(["qemu-io", "-f", "raw", str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


def test_locking_against_qemu_writer(qemu_raw):
    holder = _hold_with_qemu_io(qemu_raw)
    try:
        r = vmm("resize", "-f", "raw", qemu_raw, "+1M", check=False)
        assert r.returncode == 1
        assert r.stderr == ("vmm-img: vmm_block_open: %s: Failed to get shared \"write\" lock: "
                            "is another process using the image?\n" % qemu_raw)
        r = vmm("info", "-f", "raw", qemu_raw, check=False)
        assert r.returncode == 1
        assert "Failed to get shared \"write\" lock" in r.stderr
        assert vmm("info", "-U", "-f", "raw", qemu_raw).returncode == 0
    finally:
        holder.stdin.close()
        holder.wait()
    vmm("resize", "-f", "raw", qemu_raw, "+1M")


def test_qemu_refuses_image_vmm_writes(qemu_raw):
    """vmm-img's own writer lock is seen by qemu-img (same lock bytes)."""
    p = subprocess.Popen(["python3", "-c", """
import ctypes, sys, time
sys.path.insert(0, %r)
from vmmimg_helpers import lib_handle
lib = lib_handle()
h = lib.vmm_block_open(%r, b"raw", 1)
print("open" if h else "fail", flush=True)
time.sleep(3)
""" % (os.path.dirname(__file__), str(qemu_raw).encode())], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "open"
        r = qemu_img("resize", "-f", "raw", qemu_raw, "+1M", check=False)
        assert r.returncode == 1
        assert "Failed to get \"write\" lock" in r.stderr
        r = qemu_img("convert", "-f", "raw", "-O", "raw", qemu_raw, str(qemu_raw) + ".copy", check=False)
        assert r.returncode == 1
        assert "Failed to get shared \"write\" lock" in r.stderr
    finally:
        p.kill()
        p.wait()


def test_host_device_on_loop_device(qemu_raw, tmp_path):
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root and loop devices")
    r = run("losetup", "--find", "--show", qemu_raw, check=False)
    if r.returncode != 0:
        pytest.skip("losetup failed: " + r.stderr)
    dev = r.stdout.strip()
    try:
        info = info_json(vmm, dev, "-f", "raw")
        assert info["virtual-size"] == 16 * MiB
        out = tmp_path / "from-dev.raw"
        vmm("convert", "-f", "raw", "-O", "raw", dev, out)
        assert read_bytes(out) == read_bytes(qemu_raw)
    finally:
        run("losetup", "-d", dev, check=False)


def test_create_never_truncates_an_image_in_use(qemu_raw):
    before = read_bytes(qemu_raw)
    holder = _hold_with_qemu_io(qemu_raw)
    try:
        r = vmm("create", "-f", "raw", qemu_raw, "1M", check=False)
        assert r.returncode == 1
        assert r.stderr.endswith(": Failed to get shared \"write\" lock: is another process using the image?\n")
        assert read_bytes(qemu_raw) == before
    finally:
        holder.stdin.close()
        holder.wait()


def test_convert_onto_its_own_source_is_refused(qemu_raw):
    before = read_bytes(qemu_raw)
    r = vmm("convert", "-f", "raw", "-O", "raw", qemu_raw, qemu_raw, check=False)
    assert r.returncode == 1
    assert "lock" in r.stderr
    assert read_bytes(qemu_raw) == before
