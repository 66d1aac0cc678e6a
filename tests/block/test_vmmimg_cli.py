"""vmm-img's command line: help, and one exact error line per bad input,
with a non-zero exit and the image left untouched."""
import os

import pytest

from vmmimg_helpers import qemu_img, read_bytes, vmm

COMMANDS = ["amend", "bench", "check", "commit", "compare", "convert", "create", "info", "map",
            "measure", "rebase", "resize", "snapshot"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_for_each_command(cmd):
    r = vmm(cmd, "--help")
    assert r.stdout.startswith("usage: vmm-img " + cmd + " ")
    assert r.stderr == ""


def test_global_help_lists_commands():
    out = vmm("--help").stdout
    for cmd in COMMANDS:
        assert ("  " + cmd + " ") in out


@pytest.fixture
def raw(tmp_path):
    p = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", p, "1M")
    return p


def err(*args):
    r = vmm(*args, check=False)
    return r.returncode, r.stderr


def test_unknown_command():
    assert err("frobnicate") == (1, "vmm-img: Command not found: frobnicate\n")


def test_bad_option(raw):
    assert err("info", "--bogus", raw) == (
        1, "vmm-img: info: unrecognized option '--bogus' (try 'vmm-img info --help')\n")
    assert err("info", "-Z", raw) == (1, "vmm-img: info: invalid option -- 'Z' (try 'vmm-img info --help')\n")
    assert err("info", raw, "-f") == (
        1, "vmm-img: info: option '-f' requires an argument (try 'vmm-img info --help')\n")


def test_bad_output_format(raw):
    assert err("info", "--output=xml", raw) == (1, "vmm-img: --output must be used with human or json as argument.\n")


def test_missing_file(tmp_path):
    missing = tmp_path / "missing.raw"
    assert err("info", missing) == (
        1, "vmm-img: vmm_block_open: Could not open '%s': No such file or directory\n" % missing)


def test_unknown_format(raw):
    assert err("info", "-f", "vdi", raw) == (1, "vmm-img: vmm_block_open: %s: Unknown driver 'vdi'\n" % raw)


def test_negative_size_is_an_option_error(tmp_path):
    assert err("create", "-f", "raw", tmp_path / "n.raw", "-5") == (
        1, "vmm-img: create: invalid option -- '5' (try 'vmm-img create --help')\n")


@pytest.mark.parametrize("size", ["1Q", "abc", "1.5.5G", "", "0.3"])
def test_bad_size_suffix(tmp_path, size):
    p = tmp_path / "new.raw"
    assert err("create", "-f", "raw", p, size) == (
        1, "vmm-img: Invalid image size specified. You may use k, M, G, T, P or E suffixes for "
           "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n")
    assert not p.exists()


def test_create_bad_option(tmp_path):
    p = tmp_path / "new.raw"
    assert err("create", "-f", "raw", "-o", "cluster_size=64k", p, "1M") == (
        1, "vmm-img: vmm_block_create: %s: Invalid parameter 'cluster_size'\n" % p)
    assert err("create", "-f", "raw", "-o", "preallocation=some", p, "1M") == (
        1, "vmm-img: vmm_block_create: %s: raw: preallocation: 'some' is not one of: off, metadata, "
           "falloc, full\n" % p)


def test_create_without_size():
    assert err("create", "-f", "raw", "/nonexistent/x.raw") == (1, "vmm-img: Image creation needs a size parameter\n")


def test_create_backing_needs_format(tmp_path, raw):
    p = tmp_path / "top.qcow2"
    assert err("create", "-f", "qcow2", "-b", raw, p) == (
        1, "vmm-img: %s: Backing file specified without backing format (use -F)\n" % p)
    assert not p.exists()


def test_resize_bad_size_leaves_image(raw):
    before = read_bytes(raw)
    assert err("resize", "-f", "raw", raw, "+1X")[0] == 1
    assert err("resize", "-f", "raw", raw, "-2M") == (1, "vmm-img: New image size must be positive\n")
    assert read_bytes(raw) == before


def test_check_bad_repair_mode(raw):
    assert err("check", "-r", "some", raw) == (
        1, "vmm-img: Unknown option value for -r (expecting 'leaks' or 'all'): some\n")


def test_convert_argument_errors(raw, tmp_path):
    out = tmp_path / "out.raw"
    assert err("convert", raw) == (
        1, "vmm-img: Expecting at least one source filename and one target filename "
           "(try 'vmm-img convert --help')\n")
    assert err("convert", "-S", "100", raw, out) == (
        1, "vmm-img: Invalid buffer size for sparse output specified. Valid sizes are multiples of "
           "512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).\n")
    assert err("convert", "-m", "17", raw, out) == (
        1, "vmm-img: Invalid number of coroutines. Allowed number of coroutines is between 1 and 16\n")
    assert err("convert", "-O", "vdi", "-f", "raw", raw, out) == (
        1, "vmm-img: vmm_block_create: %s: Unknown file format 'vdi'\n" % out)
    assert not out.exists()


def test_compare_errors_exit_2(raw, tmp_path):
    r = vmm("compare", raw, tmp_path / "nope", check=False)
    assert r.returncode == 2
    assert r.stderr == "vmm-img: vmm_block_open: Could not open '%s': No such file or directory\n" % (
        tmp_path / "nope")
    r = vmm("compare", raw, check=False)
    assert r.returncode == 2


def test_bench_errors(raw):
    assert err("bench", "-c", "0", raw) == (1, "vmm-img: Invalid request count specified\n")
    assert err("bench", "-w", "--flush-interval=4", "-d", "8", raw) == (
        1, "vmm-img: Flush interval can't be smaller than depth\n")
    assert err("bench", "--flush-interval=64", raw) == (
        1, "vmm-img: --flush-interval is only available in write tests\n")
    assert err("bench", "-s", "2M", "-f", "raw", raw) == (
        1, "vmm-img: The image is too small for the given offset and buffer size\n")


def test_snapshot_on_raw_is_refused(raw):
    before = read_bytes(raw)
    assert err("snapshot", "-c", "s1", "-f", "raw", raw) == (
        1, "vmm-img: vmm_block_snapshot_create: %s: format 'raw' does not support internal snapshots\n" % raw)
    assert read_bytes(raw) == before


def test_measure_argument_errors():
    assert err("measure", "-O", "raw") == (1, "vmm-img: Either --size N or one filename must be specified.\n")


def test_rebase_needs_b(raw):
    assert err("rebase", raw) == (
        1, "vmm-img: Must specify backing file (-b) (use -b \"\" to remove the backing file)\n")


def test_commit_without_backing(tmp_path):
    p = tmp_path / "lone.qcow2"
    qemu_img("create", "-f", "qcow2", p, "1M")
    assert err("commit", p) == (1, "vmm-img: vmm_block_commit: %s: Image does not have a backing file\n" % p)


def test_amend_raw_is_refused(raw):
    assert err("amend", "-o", "compat=0.10", "-f", "raw", raw) == (
        1, "vmm-img: vmm_block_amend: %s: format 'raw' does not support amend\n" % raw)
    assert os.path.getsize(raw) == 1 << 20


def test_create_option_help():
    out = vmm("create", "-f", "raw", "-o", "help").stdout
    assert out.startswith("Supported options:\n  size=<size>")
    assert "  preallocation=<enum>" in out
    assert err("create", "-f", "vdi", "-o", "help") == (
        1, "vmm-img: vmm_block_list_create_options: Unknown file format 'vdi'\n")
