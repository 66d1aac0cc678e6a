"""Crash safety: vmm-img is killed (SIGKILL, through an LD_PRELOAD shim)
just before its Nth write to the image, for many N, during allocating
writes, snapshot operations and resize.  Every image left behind must pass
qemu-img check with zero corruptions (leaks are allowed) and still open."""
import json
import os
import shutil
import signal

import pytest

from vmmimg_helpers import BUILD, VMM_IMG, qemu_img, qemu_io, run

SHIM = os.path.join(BUILD, "tests", "block", "qcow2-crash-shim.so")
MiB = 1 << 20
MAX_POINTS = 40


def run_with_shim(args, match, at=None, count_file=None):
    env = dict(os.environ, LD_PRELOAD=SHIM, CRASH_SHIM_MATCH=match)
    if at is not None:
        env["CRASH_SHIM_AT"] = str(at)
    if count_file:
        env["CRASH_SHIM_COUNT"] = str(count_file)
    import subprocess
    return subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True)


def crash_points(total):
    if total <= MAX_POINTS:
        return list(range(1, total + 1))
    step = total / MAX_POINTS
    pts = sorted({1, 2, 3, total} | {int(1 + i * step) for i in range(MAX_POINTS)})
    return pts


def qemu_verdict(path):
    p = run("qemu-img", "check", "--output=json", path, check=False)
    res = json.loads(p.stdout) if p.stdout.strip() else {}
    return p.returncode, res, p.stderr


def exercise(tmp_path, prepare, args_of, name):
    """Count the writes `args_of(img)` makes, then crash at each point."""
    base = tmp_path / ("base-" + name)
    prepare(base)
    work = tmp_path / name
    shutil.copy(base, work)
    counter = tmp_path / "count"
    p = run_with_shim(args_of(work), name, count_file=counter)
    assert p.returncode == 0, p.stderr
    total = int(open(counter).read())
    assert total > 0
    crashed = 0
    for at in crash_points(total):
        shutil.copy(base, work)
        p = run_with_shim(args_of(work), name, at=at)
        if p.returncode == -signal.SIGKILL:
            crashed += 1
        rc, res, err = qemu_verdict(work)
        assert rc in (0, 3), "crash at write %d/%d: qemu-img check rc=%d %s %s" % (
            at, total, rc, res, err)
        assert res.get("corruptions", 0) == 0, (at, res)
        # and we can still open and read it
        run(VMM_IMG, "convert", "-O", "raw", work, tmp_path / "after.raw")
    assert crashed > 0
    return total


def make_source(path, size):
    with open(path, "wb") as f:
        for i in range(size // (256 * 1024)):
            f.write(os.urandom(64 * 1024) + bytes(192 * 1024) if i % 2 else os.urandom(256 * 1024))


@pytest.mark.parametrize("opts", ["cluster_size=64k", "cluster_size=512",
                                  "cluster_size=4k,refcount_bits=64", "compat=0.10"])
def test_crash_during_allocating_writes(tmp_path, opts):
    src = tmp_path / "src.raw"
    make_source(src, 12 * MiB)

    def prepare(p):
        run(VMM_IMG, "create", "-f", "qcow2", "-o", opts, p, "12M")

    exercise(tmp_path, prepare,
             lambda img: [VMM_IMG, "convert", "-n", "-O", "qcow2", src, img], "alloc.qcow2")


def test_crash_during_compressed_writes(tmp_path):
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(b"compressible " * (4 * MiB // 13) + b"\0" * (4 * MiB % 13))

    def prepare(p):
        run(VMM_IMG, "create", "-f", "qcow2", "-o", "cluster_size=4k", p, "4M")

    exercise(tmp_path, prepare,
             lambda img: [VMM_IMG, "convert", "-n", "-c", "-O", "qcow2", src, img], "comp.qcow2")


def with_data(p, opts="cluster_size=4k"):
    qemu_img("create", "-f", "qcow2", "-o", opts, p, "8M")
    qemu_io("qcow2", p, "write -P 1 0 3M", "write -P 2 5M 100k")


def test_crash_during_snapshot_create(tmp_path):
    def prepare(p):
        with_data(p)
        qemu_img("snapshot", "-c", "old", p)
        qemu_io("qcow2", p, "write -P 3 1M 1M")

    exercise(tmp_path, prepare, lambda img: [VMM_IMG, "snapshot", "-c", "new", img], "snapc.qcow2")


def test_crash_during_snapshot_apply_and_delete(tmp_path):
    def prepare(p):
        with_data(p)
        qemu_img("snapshot", "-c", "old", p)
        qemu_io("qcow2", p, "write -P 3 1M 1M")

    exercise(tmp_path, prepare, lambda img: [VMM_IMG, "snapshot", "-a", "old", img], "snapa.qcow2")
    exercise(tmp_path, prepare, lambda img: [VMM_IMG, "snapshot", "-d", "old", img], "snapd.qcow2")


def test_crash_during_resize(tmp_path):
    def prepare(p):
        with_data(p, "cluster_size=512")

    exercise(tmp_path, prepare, lambda img: [VMM_IMG, "resize", img, "1G"], "grow.qcow2")
    exercise(tmp_path, prepare, lambda img: [VMM_IMG, "resize", "--shrink", img, "2M"],
             "shrink.qcow2")


def test_crash_with_lazy_refcounts_then_repair(tmp_path):
    """With lazy refcounts a crash leaves a dirty image; our next read-write
    open repairs it and qemu-img then finds it clean."""
    src = tmp_path / "src.raw"
    make_source(src, 4 * MiB)
    base = tmp_path / "lazybase.qcow2"
    run(VMM_IMG, "create", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4k", base, "4M")
    work = tmp_path / "lazy.qcow2"
    for at in (5, 40, 200):
        shutil.copy(base, work)
        run_with_shim([VMM_IMG, "convert", "-n", "-O", "qcow2", src, work], "lazy.qcow2", at=at)
        run(VMM_IMG, "snapshot", "-c", "x", work)     # read-write open: repair
        rc, res, err = qemu_verdict(work)
        assert rc == 0, (at, res, err)
