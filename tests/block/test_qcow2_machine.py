"""A qcow2 drive written by a guest through virtio-blk (vmm-run, the
virtio-blk test guest, merge=1: eight adjacent 4 KiB writes at 512 KiB)
must leave an image whose refcounts are exactly its references: vmm-img
check and qemu-img check clean, and no refcount past what the metadata
references (qemu-img check does not look past the end of the file, so the
refcounts are also compared here directly).

The machine's qcow2 driver counts clusters ahead for its writes and gives
the unused ones back when the drive is closed; vmm-run used to leave
without freeing the machine whenever it read stdin (the default serial
console), so those clusters stayed counted past the end of the file."""
import os
import struct
import subprocess

import pytest

from vmmimg_helpers import BUILD, qemu_img, qemu_io, read_bytes, vmm

VMM_RUN = os.path.join(BUILD, "tools", "vmm-run", "vmm-run")
GUEST = os.path.join(BUILD, "tests", "guest", "virtio", "virtio-blk.elf")
GUEST_PASS = 33            # isa-debug-exit status of the guest's success

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="/dev/kvm is missing or not accessible")

OFFSET_MASK = 0x00fffffffffffe00
COMPRESSED = 1 << 62


def refcounts(path):
    """{cluster: refcount} for every non-zero stored refcount."""
    data = read_bytes(path)
    cluster_bits = struct.unpack(">I", data[20:24])[0]
    cs = 1 << cluster_bits
    rt_off, rt_clusters = struct.unpack(">QI", data[48:60])
    order = struct.unpack(">I", data[96:100])[0]
    assert order == 4, "this walker reads 16-bit refcounts"
    per_block = cs // 2
    counts = {}
    for i in range(rt_clusters * cs // 8):
        block = struct.unpack(">Q", data[rt_off + 8 * i:rt_off + 8 * i + 8])[0]
        if not block:
            continue
        assert block + cs <= len(data), "refcount block %#x past the end of the file" % block
        for j in range(per_block):
            rc = struct.unpack(">H", data[block + 2 * j:block + 2 * j + 2])[0]
            if rc:
                counts[i * per_block + j] = rc
    return counts


def references(path):
    """{cluster: references} from the header, L1, L2 and refcount tables
    (images without snapshots, extensions or compressed clusters)."""
    data = read_bytes(path)
    cluster_bits = struct.unpack(">I", data[20:24])[0]
    cs = 1 << cluster_bits
    l1_size, l1_off, rt_off, rt_clusters, nb_snapshots = struct.unpack(">IQQII", data[36:64])
    assert nb_snapshots == 0
    refs = {}

    def add(offset, length):
        for c in range(offset // cs, (offset + length + cs - 1) // cs):
            refs[c] = refs.get(c, 0) + 1

    add(0, cs)
    add(l1_off, l1_size * 8)
    add(rt_off, rt_clusters * cs)
    for i in range(rt_clusters * cs // 8):
        block = struct.unpack(">Q", data[rt_off + 8 * i:rt_off + 8 * i + 8])[0]
        if block:
            add(block, cs)
    for i in range(l1_size):
        l2 = struct.unpack(">Q", data[l1_off + 8 * i:l1_off + 8 * i + 8])[0] & OFFSET_MASK
        if not l2:
            continue
        add(l2, cs)
        for j in range(cs // 8):
            entry = struct.unpack(">Q", data[l2 + 8 * j:l2 + 8 * j + 8])[0]
            assert not entry & COMPRESSED
            if entry & OFFSET_MASK:
                add(entry & OFFSET_MASK, cs)
    return refs, len(data) // cs


def run_guest(image, stdin, serial=None):
    cmd = [VMM_RUN, "--machine", "pc", "--kernel", GUEST, "--append", "transport=pci merge=1",
           "--drive", "file=%s,format=qcow2" % image,
           "--device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    if serial:
        cmd += ["--serial", serial]
    p = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == GUEST_PASS, (p.returncode, out, err)
    if not serial:
        assert "virtio-blk: merge: 32 KiB read back as written" in out, out


def assert_clean(image):
    """Both checkers say clean, refcounts == references, nothing past EOF."""
    p = vmm("check", "-f", "qcow2", image, check=False)
    assert p.returncode == 0 and "Leaked" not in p.stdout + p.stderr, p.stdout + p.stderr
    assert "No errors were found" in p.stdout, p.stdout
    p = qemu_img("check", "-f", "qcow2", image, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    refs, file_clusters = references(image)
    counts = refcounts(image)
    beyond = sorted(c for c in counts if c >= file_clusters)
    assert not beyond, "refcounts past the end of the file (%d clusters): %s" % (
        file_clusters, beyond[:8])
    assert counts == refs, "stored refcounts differ from the references: %s" % sorted(
        set(counts.items()) ^ set(refs.items()))[:8]


@pytest.fixture(scope="module", autouse=True)
def built():
    for f in (VMM_RUN, GUEST):
        assert os.path.exists(f), "%s is not built" % f


@pytest.mark.parametrize("stdin", ["devnull", "open-pipe", "serial-file"])
@pytest.mark.parametrize("creator", ["vmm-img", "qemu-img"])
def test_guest_writes_leave_no_counted_clusters(tmp_path, stdin, creator):
    image = str(tmp_path / "d0.qcow2")
    (vmm if creator == "vmm-img" else qemu_img)("create", "-q", "-f", "qcow2", image, "4M")
    # no prefill: the guest's write must allocate (a write into allocated
    # clusters counts nothing ahead)
    if stdin == "devnull":
        run_guest(image, subprocess.DEVNULL)
    elif stdin == "open-pipe":
        # stdin stays open and silent: the console reader waits in poll/read
        r, w = os.pipe()
        try:
            run_guest(image, r)
        finally:
            os.close(r)
            os.close(w)
    else:
        run_guest(image, subprocess.DEVNULL, serial="file:" + str(tmp_path / "console"))
    assert_clean(image)
    reads = ["read -P 0x%x %dk 4k" % (0xe0 + i, 512 + 4 * i) for i in range(8)]
    for cmd in reads + ["read -P 0 0 512k", "read -P 0 544k 3552k"]:
        out = qemu_io("qcow2", image, cmd).stdout
        assert "fail" not in out.lower(), (cmd, out)
