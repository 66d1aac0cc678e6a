"""Drives and virtio-blk through the public API: vmm_machine_add_drive /
add_block / remove_drive and their errors, and virtio-blk's I/O error
policies against a real failing peer (nbdkit's error filter over the NBD
client): werror=report (the guest sees IOERR), werror=stop (the machine
pauses, BLOCK_IO_ERROR says action stop, resume after the error cleared
completes the request), rerror=ignore; the BLOCK_IO_ERROR event in QMP."""
import errno
import os
import shutil
import subprocess
import time

import pytest

import libvmm

BUILD = os.environ.get("VMM_BUILD_DIR", "build")
GUEST = os.path.join(BUILD, "tests", "guest", "virtio", "virtio-blk.elf")
EXIT_DEV = "isa-debug-exit,iobase=0xf4,iosize=4"
needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                               reason="/dev/kvm is missing or not accessible")
needs_nbdkit = pytest.mark.skipif(not shutil.which("nbdkit"), reason="nbdkit is not installed")


@pytest.fixture
def image(tmp_path):
    path = str(tmp_path / "disk.qcow2")
    libvmm.Block.create(path, "qcow2", 4 << 20)
    return path


# ---- drives without a guest ------------------------------------------------------

def test_add_drive_lists_it_as_a_block_node(image):
    with libvmm.Machine("pc") as m:
        m.add_drive(f"file={image},format=qcow2,id=hd0,cache=writethrough,aio=threads,"
                    "discard=unmap")
        nodes = m.block_nodes()
        assert [(n.name, n.driver, n.filename, n.read_only, n.device) for n in nodes] == \
            [("hd0", "qcow2", image, False, None)]
        m.add_device("virtio-blk-pci,drive=hd0")
        assert [n.device for n in m.block_nodes()] == ["virtio-blk-pci"]


@pytest.mark.parametrize("spec, words", [
    ("file={img},id=a,bogus=1", ["unknown property 'bogus'"]),
    ("file={img},id=a,cache=fast", ["cache=fast", "writeback", "none", "unsafe"]),
    ("file={img},id=a,aio=io_uring", ["aio=io_uring", "threads", "native"]),
    ("file={img},id=a,readonly=maybe", ["readonly=maybe"]),
    ("file={img},id=a,format=vmdk", ["format=vmdk", "raw", "qcow2"]),
    ("file={img},id=a,discard=sometimes", ["discard=sometimes", "unmap"]),
    ("id=a", ["file= is required"]),
    ("file={img}", ["id= is required"]),
])
def test_add_drive_errors_name_the_problem(image, spec, words):
    with libvmm.Machine("pc") as m:
        with pytest.raises(libvmm.InvalidArgumentError) as e:
            m.add_drive(spec.format(img=image))
        assert e.value.message.startswith("vmm_machine_add_drive: ")
        for w in words:
            assert w in e.value.message
        assert m.block_nodes() == []


def test_duplicate_and_missing_files(image, tmp_path):
    with libvmm.Machine("pc") as m:
        m.add_drive(f"file={image},id=hd0")
        with pytest.raises(libvmm.Error) as e:
            m.add_drive(f"file={image},id=hd0,readonly=on")
        assert e.value.errno == errno.EEXIST
        with pytest.raises(libvmm.Error) as e:
            m.add_drive(f"file={tmp_path}/none.raw,format=raw,id=x")
        assert e.value.errno == errno.ENOENT
        assert [n.name for n in m.block_nodes()] == ["hd0"]


def test_add_block_takes_the_image_over(image):
    blk = libvmm.Block(image, writable=True)
    with libvmm.Machine("pc") as m:
        m.add_block("mine", blk, read_only=True)
        assert [(n.name, n.read_only) for n in m.block_nodes()] == [("mine", True)]
        blk.close()   # emptied: the machine closes the image
        m.remove_drive("mine")
        assert m.block_nodes() == []


def test_one_image_is_one_drive(image):
    # A second drive on the same handle would close it twice at machine
    # free (and share its completion fd between two devices).
    blk = libvmm.Block(image, writable=True)
    with libvmm.Machine("pc") as m:
        assert libvmm.lib.vmm_machine_add_block(m.handle, b"a", blk.handle, 0) == 0
        assert libvmm.lib.vmm_machine_add_block(m.handle, b"b", blk.handle, 0) == -1
        assert libvmm.lib.vmm_get_errno() == errno.EBUSY
        assert "drive 'a'" in libvmm.ffi.string(libvmm.lib.vmm_get_error()).decode()
        blk._blk = libvmm.ffi.NULL   # the machine owns it now
        assert [n.name for n in m.block_nodes()] == ["a"]


def test_a_drive_in_use_cannot_be_removed(image):
    with libvmm.Machine("pc") as m:
        m.add_drive(f"file={image},id=hd0")
        m.add_device("virtio-blk-pci,id=disk0,drive=hd0")
        with pytest.raises(libvmm.Error) as e:
            m.remove_drive("hd0")
        assert e.value.errno == errno.EBUSY and "disk0" in e.value.message
        m.remove_device("disk0")
        m.remove_drive("hd0")
        with pytest.raises(libvmm.NotFoundError):
            m.remove_drive("hd0")


@needs_kvm
def test_device_needs_an_existing_drive():
    with libvmm.Machine("pc", kernel=GUEST, devices=["virtio-blk-pci,drive=nothere"]) as m:
        with pytest.raises(libvmm.Error) as e:
            m.start()
        assert "virtio-blk-pci" in e.value.message and "no drive 'nothere'" in e.value.message


@needs_kvm
def test_two_devices_cannot_share_a_drive(image):
    with libvmm.Machine("pc", kernel=GUEST) as m:
        m.add_drive(f"file={image},id=hd0")
        m.add_device("virtio-blk-pci,id=a,drive=hd0")
        m.add_device("virtio-blk-pci,id=b,drive=hd0")
        with pytest.raises(libvmm.Error) as e:
            m.start()
        assert "drive 'hd0' is in use by a" in e.value.message


# ---- I/O errors from a real peer --------------------------------------------------

class FailingDisk:
    """nbdkit's memory plugin behind the error filter on a Unix socket:
    `op` (pwrite or pread) fails with `err` while the trigger file exists."""

    def __init__(self, tmp_path, op, err="EIO"):
        self.sock = str(tmp_path / "nbd.sock")
        self.trigger = str(tmp_path / "fail-now")
        open(self.trigger, "w").close()
        pid_file = str(tmp_path / "nbdkit.pid")
        self.proc = subprocess.Popen([
            "nbdkit", "-f", "--exit-with-parent", "-U", self.sock, "-P", pid_file,
            "--filter=error", "memory", "4M", f"error-{op}={err}", f"error-{op}-rate=100%",
            f"error-{op}-file={self.trigger}"])
        # nbdkit writes its pid file once it accepts connections (the socket
        # file exists a little earlier, between bind and listen).
        for _ in range(400):
            if os.path.exists(pid_file) or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        assert os.path.exists(pid_file), "nbdkit did not start"

    def heal(self):
        os.unlink(self.trigger)

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def more_events(qmp, name):
    """The `name` events that arrive within a short while."""
    out = []
    while True:
        try:
            out.append(qmp.event(name, timeout=0.3))
        except TimeoutError:
            return out


def run_guest(tmp_path, op, err, policy, cmdline, heal_on_stop=False, reset_on_stop=False):
    disk = FailingDisk(tmp_path, op, err)
    events, console = [], []
    try:
        with libvmm.Machine("pc", kernel=GUEST, memory="256M", reboot="off",
                            cmdline="transport=pci " + cmdline) as m:
            m.on_serial(console.append)
            m.add_device(EXIT_DEV)
            m.add_drive(f"file=nbd+unix:///?socket={disk.sock},format=raw,id=nbd0")
            m.add_device(f"virtio-blk-pci,id=disk0,drive=nbd0,{policy}")
            qmp_path = str(tmp_path / "qmp.sock")
            m.serve_qmp(qmp_path)
            with libvmm.QMPClient(qmp_path) as qmp:
                m.start()
                ev = qmp.event("BLOCK_IO_ERROR", timeout=60)
                events.append(ev)
                if reset_on_stop:
                    # A reset drops the kept request; the rebooted guest fails
                    # and stops again.
                    qmp.event("STOP", timeout=60)
                    m.reset()
                    m.resume()
                    events.append(qmp.event("BLOCK_IO_ERROR", timeout=60))
                if heal_on_stop:
                    stop = qmp.event("STOP", timeout=60)
                    assert m.state == "paused", stop
                    time.sleep(0.5)          # stays paused while the error lasts
                    assert m.state == "paused"
                    events.extend(more_events(qmp, "BLOCK_IO_ERROR"))
                    disk.heal()
                    m.resume()
                m.wait(timeout=120)
            return m.exit_code & 0xff, b"".join(console).decode(errors="replace"), events
    finally:
        disk.close()


@needs_kvm
@needs_nbdkit
def test_werror_report_gives_the_guest_ioerr(tmp_path):
    status, console, events = run_guest(tmp_path, "pwrite", "ENOSPC", "werror=report",
                                        "fail=write expect=ioerr")
    assert "virtio-blk: failing write: IOERR" in console, console
    assert status == 33, console
    data = events[0]["data"]
    assert data["device"] == "disk0" and data["node-name"] == "nbd0"
    assert data["operation"] == "write" and data["action"] == "report"
    assert data["nospace"] is True and data["reason"] == os.strerror(errno.ENOSPC)


@needs_kvm
@needs_nbdkit
def test_werror_stop_pauses_and_resume_retries(tmp_path):
    status, console, events = run_guest(tmp_path, "pwrite", "EIO", "werror=stop",
                                        "fail=write expect=ok wait=1", heal_on_stop=True)
    data = events[0]["data"]
    assert data["action"] == "stop" and data["operation"] == "write"
    assert data["nospace"] is False and data["reason"] == os.strerror(errno.EIO)
    assert "virtio-blk: failing write: OK" in console, console
    assert "virtio-blk: retried write: 4096 bytes of 0xa5" in console, console
    assert status == 33, console


@needs_kvm
@needs_nbdkit
def test_werror_stop_keeps_the_request_until_resume(tmp_path):
    # The guest notifies the queue in a loop while its write fails: the kept
    # request is retried after resume only, so one error stops the machine
    # (no retry per notification, no stream of BLOCK_IO_ERROR events).
    status, console, events = run_guest(tmp_path, "pwrite", "EIO", "werror=stop",
                                        "fail=write expect=ok wait=1 renotify=1",
                                        heal_on_stop=True)
    assert [e["data"]["action"] for e in events] == ["stop"], events
    assert "virtio-blk: retried write: 4096 bytes of 0xa5" in console, console
    assert status == 33, console


@needs_kvm
@needs_nbdkit
def test_reset_while_stopped_drops_the_kept_request(tmp_path):
    status, console, events = run_guest(tmp_path, "pwrite", "EIO", "werror=stop",
                                        "fail=write expect=ok wait=1", heal_on_stop=True,
                                        reset_on_stop=True)
    assert [e["data"]["action"] for e in events] == ["stop", "stop"]
    assert console.count("virtio-blk: found on PCI") == 2, console
    assert "virtio-blk: retried write: 4096 bytes of 0xa5" in console, console
    assert status == 33, console


@needs_kvm
@needs_nbdkit
@pytest.mark.parametrize("policy, action, guest_sees", [
    ("rerror=ignore", "ignore", "OK"),
    ("serial=x", "report", "IOERR"),          # rerror=report is the default
])
def test_read_errors_follow_rerror(tmp_path, policy, action, guest_sees):
    status, console, events = run_guest(tmp_path, "pread", "EIO", policy,
                                        f"fail=read expect={guest_sees.lower()}")
    assert events[0]["data"]["operation"] == "read"
    assert events[0]["data"]["action"] == action
    assert f"virtio-blk: failing read: {guest_sees}" in console, console
    assert status == 33, console


# ---- QMP block nodes are drives -----------------------------------------------------

@needs_kvm
def test_blockdev_add_node_serves_as_a_drive(tmp_path, image):
    other = str(tmp_path / "other.raw")
    libvmm.Block.create(other, "raw", 1 << 20)
    qmp_path = str(tmp_path / "qmp.sock")
    console = []
    with libvmm.Machine("pc", kernel=GUEST, memory="256M", reboot="off",
                        cmdline="transport=pci getid=1 serial=qmpnode") as m:
        m.on_serial(console.append)
        m.add_device(EXIT_DEV)
        m.serve_qmp(qmp_path)
        m.add_drive(f"file={other},format=raw,id=other")
        with libvmm.QMPClient(qmp_path) as qmp:
            qmp.command("blockdev-add", driver="qcow2", node_name="n0", discard="unmap",
                        file={"driver": "file", "filename": image})
            names = [n["node-name"] for n in qmp.command("query-named-block-nodes")]
            assert names == ["other", "n0"]
            m.remove_drive("other")
            m.add_device("virtio-blk-pci,id=disk0,drive=n0,serial=qmpnode")
            with pytest.raises(libvmm.QMPError) as e:
                qmp.command("blockdev-del", node_name="n0")
            assert "n0" in e.value.desc and "disk0" in e.value.desc
            assert qmp.command("query-block")[0]["inserted"]["node-name"] == "n0"
            m.start()
            blocks = qmp.command("query-block")
            m.wait(timeout=120)
        status = m.exit_code & 0xff
    assert len(blocks) == 1 and blocks[0]["qdev"] == "/machine/peripheral/disk0/virtio-backend"
    assert blocks[0]["inserted"]["drv"] == "qcow2" and blocks[0]["inserted"]["file"] == image
    text = b"".join(console).decode(errors="replace")
    assert "virtio-blk: serial 'qmpnode'" in text and "virtio-blk: ok" in text, text
    assert "virtio-blk: discarded range: 8192 bytes of 0x00" in text   # discard=unmap took
    assert status == 33


# ---- request merging and query-blockstats -------------------------------------------

MERGE_PATTERNS = [(0xe0 + i, (512 + 4 * i) * 1024) for i in range(8)]


def qemu_io_reads(path, fmt, pattern, offset, length):
    return subprocess.run(["qemu-io", "-r", "-f", fmt, "-c", f"read -P {pattern:#x} {offset} {length}",
                           path], capture_output=True, text=True).returncode == 0


@needs_kvm
@pytest.mark.parametrize("merge", ["on", "off"])
def test_adjacent_requests_are_merged_and_counted(tmp_path, merge):
    # The guest posts 8 adjacent 4 KiB writes before one notify, then 8
    # adjacent reads: with merge=on each batch is one block-layer request
    # (7 merged into the first), with merge=off none is; the image is the same.
    img = str(tmp_path / "disk.raw")
    libvmm.Block.create(img, "raw", 4 << 20)
    console = []
    with libvmm.Machine("pc", kernel=GUEST, memory="256M", reboot="off",
                        cmdline="transport=pci merge=1") as m:
        m.on_serial(console.append)
        m.add_device(EXIT_DEV)
        m.add_drive(f"file={img},format=raw,id=d0")
        m.add_device(f"virtio-blk-pci,id=disk0,drive=d0,merge={merge}")
        assert m.qmp("query-blockstats")[0]["stats"]["wr_operations"] == 0
        m.start()
        m.wait(timeout=120)
        blockstats = m.qmp("query-blockstats")
        hmp = m.qmp("human-monitor-command", command_line="info blockstats")
        api_stats = m.block_nodes()[0].stats
        status = m.exit_code & 0xff
    text = b"".join(console).decode(errors="replace")
    assert "virtio-blk: merge: 32 KiB read back as written" in text, text
    assert status == 33, text
    assert len(blockstats) == 1, blockstats
    entry = blockstats[0]
    assert entry["device"] == "" and entry["node-name"] == "d0"
    assert entry["qdev"] == "/machine/peripheral/disk0/virtio-backend"
    merged = 7 if merge == "on" else 0
    want = {"rd_bytes": 32768, "wr_bytes": 32768, "rd_operations": 8, "wr_operations": 8,
            "flush_operations": 0, "unmap_operations": 0, "rd_merged": merged,
            "wr_merged": merged, "failed_rd_operations": 0, "failed_wr_operations": 0}
    assert {k: entry["stats"][k] for k in want} == want, entry
    assert {k: api_stats[k] for k in want} == want, api_stats   # the C API's snapshot
    assert f"d0: rd_bytes=32768 wr_bytes=32768 rd_operations=8 wr_operations=8 " \
           f"flush_operations=0 unmap_operations=0 rd_merged={merged} wr_merged={merged}" in hmp
    for pattern, offset in MERGE_PATTERNS:
        assert qemu_io_reads(img, "raw", pattern, offset, 4096), (pattern, offset)
    assert qemu_io_reads(img, "raw", 0, 0, 512 * 1024)
    assert qemu_io_reads(img, "raw", 0, 544 * 1024, 480 * 1024)


@needs_kvm
@needs_nbdkit
def test_werror_stop_retries_a_merged_request_whole(tmp_path):
    # The 8 merged writes fail as one request: one BLOCK_IO_ERROR, one stop,
    # and after resume all 8 chains complete OK with their data on the disk.
    status, console, events = run_guest(tmp_path, "pwrite", "EIO", "werror=stop", "merge=1",
                                        heal_on_stop=True)
    assert [e["data"]["action"] for e in events] == ["stop"], events
    assert "virtio-blk: merge: 8 adjacent writes: OK" in console, console
    assert "virtio-blk: merge: 32 KiB read back as written" in console, console
    assert status == 33, console
