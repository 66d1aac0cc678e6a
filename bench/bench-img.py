#!/usr/bin/python3
"""vmm-img against qemu-img in one run: convert (raw->qcow2, qcow2->raw, -c)
and `bench` (reads and -w writes, 4 KiB and 64 KiB, -d 1 and -d 32) on raw
and qcow2 images of at least 2 GiB, on disk and on tmpfs.  Prints a table of
times and ratios (qemu-img time / vmm-img time: above 1.0 means vmm-img is
faster).  See bench/README.md."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GiB, MiB = 1 << 30, 1 << 20


def run(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if p.returncode:
        sys.exit("failed: %s\n%s%s" % (" ".join(map(str, args)), p.stdout, p.stderr))
    return p.stdout


def timed(args, repeat):
    """Best wall time of `repeat` runs; bench reports its own time, use it."""
    best = None
    for _ in range(repeat):
        os.sync()  # earlier runs' dirty pages must not be written back during this one
        t0 = time.monotonic()
        out = run(*args)
        t = time.monotonic() - t0
        for line in out.splitlines():
            if line.startswith("Run completed in "):
                t = float(line.split()[3])
        best = t if best is None else min(best, t)
    return best


def make_source(path, size, data_mib):
    """A sparse raw image: `data_mib` MiB of half-compressible data spread
    over the image in 1 MiB runs, the rest holes."""
    run("qemu-img", "create", "-q", "-f", "raw", path, str(size))
    block = (os.urandom(2048) + bytes(2048)) * 256  # 1 MiB, compresses about 2:1
    step = size // data_mib
    with open(path, "r+b") as f:
        for i in range(data_mib):
            f.seek(i * step)
            f.write(block)


def convert_rows(tools, workdir, src, repeat):
    rows = []
    qcow = os.path.join(workdir, "src.qcow2")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", src, qcow)
    cases = [("convert raw->qcow2", ["-f", "raw", "-O", "qcow2", src]),
             ("convert qcow2->raw", ["-f", "qcow2", "-O", "raw", qcow]),
             ("convert -c raw->qcow2", ["-c", "-f", "raw", "-O", "qcow2", src])]
    for name, args in cases:
        times = []
        for tool in tools:
            out = os.path.join(workdir, "out.img")
            times.append(timed([tool, "convert", *args, out], repeat))
            os.unlink(out)
            os.sync()
        rows.append((name, *times))
    return rows


def bench_rows(tools, workdir, size, count_scale, repeat):
    rows = []
    images = {}
    for fmt in ("raw", "qcow2"):
        path = os.path.join(workdir, "bench." + fmt)
        run("qemu-img", "create", "-q", "-f", fmt, "-o", "preallocation=falloc", path, str(size))
        images[fmt] = path
    for fmt, path in images.items():
        for write in (False, True):
            for bs in (4096, 65536):
                for depth in (1, 32):
                    count = int((20000 if bs == 4096 else 8000) * (2 if depth > 1 else 1) * count_scale)
                    args = ["bench", "-f", fmt, "-c", count, "-d", depth, "-s", bs] + (["-w"] if write else [])
                    name = "bench %s %s %dk -d %d" % (fmt, "write" if write else "read", bs // 1024, depth)
                    rows.append((name, *[timed([tool, *args, path], repeat) for tool in tools]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("VMM_BUILD_DIR", os.path.join(HERE, "..", "build")))
    ap.add_argument("--disk-dir", default=None, help="directory on disk (default: a temp dir under /var/tmp)")
    ap.add_argument("--tmpfs-dir", default="/dev/shm", help="directory on tmpfs")
    ap.add_argument("--size", default="2G", help="image size (at least 2G for the report)")
    ap.add_argument("--data", type=int, default=256, help="MiB of data in the convert source")
    ap.add_argument("--scale", type=float, default=1.0, help="scale bench request counts")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row (best is kept)")
    ap.add_argument("--only", choices=["disk", "tmpfs"], default=None)
    a = ap.parse_args()
    vmm_img = os.path.join(a.build, "tools", "vmm-img", "vmm-img")
    if not os.access(vmm_img, os.X_OK):
        sys.exit("no vmm-img at %s (build first or pass --build)" % vmm_img)
    size = int(run(vmm_img, "measure", "-O", "raw", "--size", a.size).split()[2])
    tools = ["qemu-img", vmm_img]
    places = [("disk", a.disk_dir or "/var/tmp"), ("tmpfs", a.tmpfs_dir)]
    all_rows = []
    for place, base in places:
        if a.only and a.only != place:
            continue
        workdir = tempfile.mkdtemp(prefix="bench-img-", dir=base)
        try:
            src = os.path.join(workdir, "src.raw")
            make_source(src, size, a.data)
            for row in convert_rows(tools, workdir, src, a.repeat) + bench_rows(tools, workdir, size, a.scale, a.repeat):
                all_rows.append((place, *row))
                print("%-6s %-28s qemu-img %8.3fs  vmm-img %8.3fs  ratio %5.2f" % (place, *row, row[1] / row[2]),
                      file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(workdir)
    print("\n%-6s | %-28s | %10s | %10s | %s" % ("where", "test", "qemu-img", "vmm-img", "ratio (qemu/vmm)"))
    print("-" * 80)
    for place, name, q, v in all_rows:
        print("%-6s | %-28s | %9.3fs | %9.3fs | %5.2fx" % (place, name, q, v, q / v))


if __name__ == "__main__":
    main()
