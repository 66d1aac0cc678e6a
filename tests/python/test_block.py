"""Block objects of the libvmm package against qemu-img / qemu-io."""
import os
import shutil
import subprocess

import pytest

import libvmm

needs_qemu_img = pytest.mark.skipif(not shutil.which("qemu-img") or not shutil.which("qemu-io"),
                                    reason="qemu-img / qemu-io are not installed")


@needs_qemu_img
def test_write_with_python_read_with_qemu_io(tmp_path):
    path = str(tmp_path / "a.qcow2")
    libvmm.Block.create(path, "qcow2", 16 << 20, cluster_size="64k")
    with libvmm.Block(path, writable=True) as b:
        assert (b.format, b.size, b.cluster_size) == ("qcow2", 16 << 20, 65536)
        b.write(1 << 20, b"\x5a" * 65536)
        b.write_zeroes(0, 65536)
        b.flush()
        assert b.read(1 << 20, 4) == b"\x5a" * 4
        assert b.info()["virtual-size"] == 16 << 20
        b.snapshot_create("snap1")
        assert [s.name for s in b.snapshots()] == ["snap1"]
        assert b.check()["corruptions"] == 0
        ext = b.block_status(1 << 20, 65536)
        assert ext.start == 1 << 20 and ext.flags & 1  # DATA
        assert b.backing is None
    p = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1M 64k", path],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "Pattern verification failed" not in p.stdout, p.stdout
    p = subprocess.run(["qemu-img", "snapshot", "-l", path], capture_output=True, text=True)
    assert "snap1" in p.stdout


@needs_qemu_img
def test_backing_chain_and_errors(tmp_path):
    base = str(tmp_path / "base.raw")
    top = str(tmp_path / "top.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", base, "1M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top],
                   check=True)
    with libvmm.Block(top) as b:
        back = b.backing
        assert back.format == "raw" and back.size == 1 << 20
        with pytest.raises(libvmm.Error) as e:
            b.write(0, b"x")  # read-only open
        assert e.value.errno and "read-only" in e.value.message
        with pytest.raises(libvmm.InvalidArgumentError):
            b.read(2 << 20, 512)  # past the end
    with pytest.raises(libvmm.NotFoundError) as e:
        libvmm.Block(str(tmp_path / "missing.qcow2"))
    assert "missing.qcow2" in e.value.message
    assert os.path.exists(top)


@pytest.mark.skipif(not shutil.which("nbdinfo") or not shutil.which("nbdcopy"),
                    reason="libnbd-bin (nbdinfo, nbdcopy) is not installed")
def test_nbd_server_exports_a_block_to_libnbd(tmp_path):
    path = str(tmp_path / "a.qcow2")
    sock = str(tmp_path / "nbd.sock")
    libvmm.Block.create(path, "qcow2", 4 << 20)
    with libvmm.Block(path, writable=True) as b:
        b.write(65536, b"\xa5" * 4096)
        b.flush()
        with libvmm.NbdServer(max_clients=2) as srv:
            srv.add_export(b, "disk", "a test export")
            srv.listen_unix(sock)
            srv.start()
            uri = "nbd+unix:///disk?socket=" + sock
            info = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True,
                                  timeout=60)
            assert info.returncode == 0, info.stderr
            assert int(info.stdout) == 4 << 20
            out = tmp_path / "copy.raw"
            cp = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True, timeout=60)
            assert cp.returncode == 0, cp.stderr
            data = out.read_bytes()
            assert data[65536:65536 + 4096] == b"\xa5" * 4096
            assert data[:65536] == bytes(65536)
            srv.stop()
    with pytest.raises(libvmm.Error):
        libvmm.NbdServer().listen_unix("/nonexistent-dir/x.sock")
