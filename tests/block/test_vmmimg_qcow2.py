"""vmm-img's commands on qcow2 images, checked against qemu-img on the same
files: convert / compare / info / map / commit / rebase / snapshot / amend.
(qcow2 format details are tested by the qcow2 driver's own test_qcow2*.py.)"""
import shutil

import pytest

from vmmimg_helpers import driver_available, info_json, map_json, qemu_img, qemu_io, read_bytes, vmm

pytestmark = pytest.mark.skipif(not driver_available("qcow2"), reason="no qcow2 driver in this build")

MiB = 1 << 20
WRITES = ["write -P 0xa1 0 64k", "write -P 0xb2 1M 3M", "write -P 0xc3 7M 4k", "write -z 2M 64k",
          "write -P 0xd4 9000 7000"]


def qemu_clean(path):
    r = qemu_img("check", path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No errors were found on the image." in r.stdout


@pytest.fixture
def src_raw(tmp_path):
    p = tmp_path / "src.raw"
    qemu_img("create", "-f", "raw", p, "16M")
    qemu_io("raw", p, *WRITES)
    return p


@pytest.fixture
def chain(tmp_path):
    """A three-deep chain made by qemu: base.qcow2 <- mid.qcow2 <- top.qcow2."""
    base, mid, top = (tmp_path / n for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    qemu_img("create", "-f", "qcow2", base, "16M")
    qemu_io("qcow2", base, "write -P 1 0 4M", "write -P 2 8M 1M")
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", mid)
    qemu_io("qcow2", mid, "write -P 3 1M 1M", "write -z 8M 512k")
    qemu_img("create", "-f", "qcow2", "-b", mid.name, "-F", "qcow2", top)
    qemu_io("qcow2", top, "write -P 4 3M 2M", "discard 0 64k")
    return base, mid, top


@pytest.mark.parametrize("opts", [[], ["-o", "cluster_size=512"], ["-o", "cluster_size=2M"],
                                  ["-o", "compat=0.10"], ["-o", "refcount_bits=1"],
                                  ["-o", "refcount_bits=64,cluster_size=4k"]])
def test_convert_raw_to_qcow2_is_clean_and_identical(src_raw, tmp_path, opts):
    out = tmp_path / "out.qcow2"
    vmm("convert", "-f", "raw", "-O", "qcow2", *opts, src_raw, out)
    qemu_clean(out)
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", src_raw, out).returncode == 0
    assert map_json(vmm, out) == map_json(qemu_img, out)
    ours, theirs = info_json(vmm, out), info_json(qemu_img, out)
    common = set(ours) & set(theirs)
    assert {k: ours[k] for k in common} == {k: theirs[k] for k in common}


def test_convert_compressed(src_raw, tmp_path):
    out = tmp_path / "c.qcow2"
    vmm("convert", "-c", "-f", "raw", "-O", "qcow2", src_raw, out)
    qemu_clean(out)
    assert qemu_img("compare", src_raw, out).returncode == 0
    r = qemu_img("check", "--output=json", out)
    assert '"compressed-clusters"' in r.stdout
    plain = tmp_path / "plain.qcow2"
    vmm("convert", "-f", "raw", "-O", "qcow2", src_raw, plain)
    assert out.stat().st_size < plain.stat().st_size


def test_chain_reads_back_like_qemu(chain, tmp_path):
    top = chain[2]
    ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
    vmm("convert", "-O", "raw", top, ours)
    qemu_img("convert", "-O", "raw", top, theirs)
    assert read_bytes(ours) == read_bytes(theirs)
    assert map_json(vmm, top) == map_json(qemu_img, top)
    assert vmm("map", top).stdout == qemu_img("map", top).stdout


def test_info_backing_chain_json_agrees(chain):
    ours, theirs = info_json(vmm, chain[2], "--backing-chain"), info_json(qemu_img, chain[2], "--backing-chain")
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        common = set(a) & set(b)
        assert {"backing-filename", "full-backing-filename", "backing-filename-format"} & common or \
            a["filename"].endswith("base.qcow2")
        assert {k: a[k] for k in common} == {k: b[k] for k in common}


def test_info_human_agrees(chain):
    assert vmm("info", chain[1]).stdout == qemu_img("info", chain[1]).stdout


def test_compare_qcow2_against_raw(chain, tmp_path):
    flat = tmp_path / "flat.raw"
    qemu_img("convert", "-O", "raw", chain[2], flat)
    r = vmm("compare", "-F", "raw", chain[2], flat, check=False)
    assert (r.returncode, r.stdout) == (0, "Images are identical.\n")
    qemu_io("raw", flat, "write -P 9 5M 512")
    ours = vmm("compare", "-F", "raw", chain[2], flat, check=False)
    theirs = qemu_img("compare", "-F", "raw", chain[2], flat, check=False)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (1, "Content mismatch at offset 5242880!\n")


def _copy_chain(chain, dst):
    dst.mkdir()
    for p in chain:
        shutil.copy(p, dst / p.name)
    return [dst / p.name for p in chain]


def test_commit_matches_qemu(chain, tmp_path):
    a, b = _copy_chain(chain, tmp_path / "a"), _copy_chain(chain, tmp_path / "b")
    assert vmm("commit", a[2]).stdout == "Image committed.\n"
    qemu_img("commit", b[2])
    for x, y in zip(a, b):
        qemu_clean(x)
        assert qemu_img("compare", x, y).returncode == 0


def test_rebase_safe_and_unsafe_match_qemu(chain, tmp_path):
    a, b = _copy_chain(chain, tmp_path / "a"), _copy_chain(chain, tmp_path / "b")
    vmm("rebase", "-b", "base.qcow2", "-F", "qcow2", a[2])
    qemu_img("rebase", "-b", "base.qcow2", "-F", "qcow2", b[2])
    qemu_clean(a[2])
    assert info_json(qemu_img, a[2])["backing-filename"] == "base.qcow2"
    assert qemu_img("compare", a[2], b[2]).returncode == 0
    assert qemu_img("compare", a[2], chain[2]).returncode == 0  # content unchanged
    vmm("rebase", "-u", "-b", "mid.qcow2", "-F", "qcow2", a[2])
    assert info_json(qemu_img, a[2])["backing-filename"] == "mid.qcow2"
    vmm("rebase", "-b", "", a[1])  # flatten mid: no backing, same content
    assert "backing-filename" not in info_json(qemu_img, a[1])
    assert qemu_img("compare", a[1], chain[1]).returncode == 0


def test_snapshots_interoperate(tmp_path):
    p = tmp_path / "s.qcow2"
    qemu_img("create", "-f", "qcow2", p, "4M")
    qemu_io("qcow2", p, "write -P 1 0 1M")
    vmm("snapshot", "-c", "ours", p)
    qemu_io("qcow2", p, "write -P 2 0 1M")
    qemu_img("snapshot", "-c", "theirs", p)
    qemu_io("qcow2", p, "write -P 3 0 1M")
    assert vmm("snapshot", "-l", p).stdout == qemu_img("snapshot", "-l", p).stdout
    qemu_img("snapshot", "-a", "ours", p)
    assert "Pattern verification failed" not in qemu_io("qcow2", p, "read -P 1 0 1M").stdout
    vmm("snapshot", "-a", "theirs", p)
    assert "Pattern verification failed" not in qemu_io("qcow2", p, "read -P 2 0 1M").stdout
    vmm("snapshot", "-d", "ours", p)
    qemu_clean(p)
    assert "theirs" in qemu_img("snapshot", "-l", p).stdout
    assert "ours" not in qemu_img("snapshot", "-l", p).stdout


def test_create_qcow2_with_options_agrees(tmp_path):
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    opts = "cluster_size=4k,refcount_bits=64,lazy_refcounts=on"
    vmm("create", "-f", "qcow2", "-o", opts, ours, "1G")
    qemu_img("create", "-f", "qcow2", "-o", opts, theirs, "1G")
    qemu_clean(ours)
    a, b = info_json(qemu_img, ours), info_json(qemu_img, theirs)
    for d in (a, b):
        del d["filename"], d["actual-size"]
    assert a == b


def test_create_with_backing_takes_its_size(tmp_path, src_raw):
    top = tmp_path / "top.qcow2"
    vmm("create", "-f", "qcow2", "-b", src_raw.name, "-F", "raw", top)
    info = info_json(qemu_img, top)
    assert info["virtual-size"] == 16 * MiB
    assert info["backing-filename-format"] == "raw"
    assert qemu_img("compare", top, src_raw).returncode == 0


def test_resize_grow_and_shrink(tmp_path):
    p = tmp_path / "r.qcow2"
    qemu_img("create", "-f", "qcow2", p, "8M")
    qemu_io("qcow2", p, "write -P 1 7M 1M")
    vmm("resize", p, "+8M")
    assert info_json(qemu_img, p)["virtual-size"] == 16 * MiB
    qemu_clean(p)
    vmm("resize", "--shrink", p, "12M")
    assert info_json(qemu_img, p)["virtual-size"] == 12 * MiB
    qemu_clean(p)
    assert "Pattern verification failed" not in qemu_io("qcow2", p, "read -P 1 7M 1M").stdout


def test_amend_compat_roundtrip(tmp_path):
    p = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", p, "8M")
    qemu_io("qcow2", p, "write -P 1 0 1M")
    vmm("amend", "-o", "compat=0.10", p)
    assert info_json(qemu_img, p)["format-specific"]["data"]["compat"] == "0.10"
    qemu_clean(p)
    vmm("amend", "-o", "compat=1.1", p)
    assert info_json(qemu_img, p)["format-specific"]["data"]["compat"] == "1.1"
    qemu_clean(p)
    assert "Pattern verification failed" not in qemu_io("qcow2", p, "read -P 1 0 1M").stdout


def test_check_json_agrees_on_clean_image(chain):
    ours = vmm("check", "--output=json", chain[0])
    theirs = qemu_img("check", "--output=json", chain[0])
    assert ours.returncode == theirs.returncode == 0
    import json
    assert json.loads(ours.stdout) == json.loads(theirs.stdout)


def test_measure_qcow2_agrees(src_raw):
    r = vmm("measure", "-O", "qcow2", src_raw, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == qemu_img("measure", "-O", "qcow2", src_raw).stdout


def test_convert_with_backing_file(src_raw, tmp_path):
    out = tmp_path / "over.qcow2"
    vmm("convert", "-f", "raw", "-O", "qcow2", "-B", src_raw.name, "-F", "raw", src_raw, out)
    qemu_clean(out)
    info = info_json(qemu_img, out)
    assert (info["backing-filename"], info["backing-filename-format"]) == (src_raw.name, "raw")
    assert qemu_img("compare", src_raw, out).returncode == 0


def test_create_option_help_lists_qcow2_options():
    out = vmm("create", "-f", "qcow2", "-o", "help").stdout
    for name in ("cluster_size", "compat", "refcount_bits", "lazy_refcounts", "backing_file", "preallocation"):
        assert "  %s=<" % name in out
