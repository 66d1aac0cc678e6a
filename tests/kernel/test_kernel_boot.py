"""Boot the stock Debian kernel (linux-image-amd64, fetched by
scripts/setup.sh --test into .cache/kernel) with an initrd and a command line
of our choosing, and check that its console shows the banner, our command
line and the e820 map libvmm built.

The bzImage compresses the kernel with xz; on a nested, software-emulated
KVM host its decompressor alone runs for many minutes, so the tests here
boot the ELF vmlinux inside it (the same kernel) through both of libvmm's ELF
entry paths: the PVH note, and the 64-bit Linux boot protocol entry.  The
bzImage loader is checked separately by test_bzimage_reaches_kernel when
LIBVMM_SLOW_TESTS=1 (it waits for the decompressor to finish)."""
import glob
import lzma
import os
import re
import select
import subprocess
import time

import pytest

BUILD = os.environ.get("VMM_BUILD_DIR", "build")
SOURCE = os.environ.get("VMM_SOURCE_DIR", ".")
VMM_RUN = os.path.join(BUILD, "tools", "vmm-run", "vmm-run")
MEMORY_MIB = 512
CMDLINE = "console=ttyS0 earlyprintk=ttyS0 libvmm.test=kernel-boot panic=-1"
BOOT_TIMEOUT_S = 400


def bzimage():
    found = sorted(glob.glob(os.path.join(SOURCE, ".cache", "kernel", "boot", "vmlinuz-*")))
    if not found:
        pytest.skip("no Debian kernel in .cache/kernel (scripts/setup.sh --test fetches it)")
    return found[-1]


def extract_vmlinux(path, out):
    """The ELF kernel inside a bzImage: the xz stream after the setup code."""
    if os.path.exists(out):
        return out
    data = open(path, "rb").read()
    start = data.find(b"\xfd7zXZ\x00")
    assert start > 0, f"{path}: no xz payload"
    elf = lzma.LZMADecompressor().decompress(data[start:])
    assert elf[:4] == b"\x7fELF"
    with open(out + ".tmp", "wb") as f:
        f.write(elf)
    os.rename(out + ".tmp", out)
    return out


def without_pvh_note(vmlinux, out):
    """A copy whose XEN_ELFNOTE_PHYS32_ENTRY note has another type, so the
    loader takes the 64-bit boot-protocol entry instead of PVH."""
    if os.path.exists(out):
        return out
    data = bytearray(open(vmlinux, "rb").read())
    pattern = re.compile(rb"\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00")
    matches = list(pattern.finditer(data))
    assert len(matches) == 1, "expected exactly one PVH entry note"
    data[matches[0].start() + 8] = 0x7f  # an unused note type
    with open(out, "wb") as f:
        f.write(data)
    return out


def newc_initrd(path):
    """A one-file initramfs in the cpio 'newc' format the kernel unpacks."""
    def entry(name, mode, body):
        name_b = name.encode() + b"\0"
        header = b"070701" + b"".join(b"%08X" % v for v in (
            0, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name_b), 0))
        blob = header + name_b
        blob += b"\0" * (-len(blob) % 4) + body
        return blob + b"\0" * (-len(blob) % 4)
    data = entry("init", 0o100755, b"#!/bin/sh\necho hello from the initrd\n")
    data += entry("TRAILER!!!", 0, b"")
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    cache = os.path.join(BUILD, "kernel-cache")
    os.makedirs(cache, exist_ok=True)
    bz = bzimage()
    vmlinux = extract_vmlinux(bz, os.path.join(cache, "vmlinux"))
    return {"bzImage": bz, "pvh": vmlinux,
            "elf64": without_pvh_note(vmlinux, os.path.join(cache, "vmlinux-nopvh")),
            "initrd": newc_initrd(str(tmp_path_factory.mktemp("initrd") / "initrd.cpio"))}


def boot_until(kernel, initrd, wanted, timeout, extra=()):
    """Run vmm-run until every regex in `wanted` matched the console (or
    the time runs out), then stop it; returns the console text."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is missing or not accessible")
    cmd = [VMM_RUN, "--kernel", kernel, "--initrd", initrd, "--append", CMDLINE,
           "--memory", f"{MEMORY_MIB}M", "--no-reboot", *extra]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    console, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                console += chunk
                text = console.decode(errors="replace")
                if all(re.search(w, text, re.M) for w in wanted):
                    break
    finally:
        proc.kill()
        proc.wait()
    return console.decode(errors="replace").replace("\r", "")


# What a kernel must print when libvmm booted it right: the banner, our
# command line, and the RAM ranges of libvmm's e820 map.
E820_LOW = r"BIOS-e820: \[mem 0x0000000000000000-0x000000000009fbff\] usable"
E820_HIGH = r"BIOS-e820: \[mem 0x0000000000100000-0x%016x\] usable" % (MEMORY_MIB * 2**20 - 1)
WANTED = [r"Linux version 6\.\d+", r"Command line: " + re.escape(CMDLINE), E820_LOW, E820_HIGH,
          r"ACPI: RSDP 0x00000000000E0000", r"ACPI: APIC 0x"]


@pytest.mark.parametrize("entry", ["pvh", "elf64"])
def test_stock_kernel_boots(kernels, entry):
    console = boot_until(kernels[entry], kernels["initrd"], WANTED, BOOT_TIMEOUT_S)
    print(console)
    for w in WANTED:
        assert re.search(w, console, re.M), f"console lacks {w!r}"
    assert "RAMDISK: [mem" in console, "the kernel did not find the initrd"


def test_stock_kernel_finds_the_pci_tables(kernels):
    # Machine pc with a virtio device: the kernel lists our MCFG (ECAM) next
    # to the other tables.  PCI probing itself comes later than this nested
    # host lets a stock kernel get (see ../shared/ENVIRONMENT.md).
    wanted = WANTED + [r"ACPI: MCFG 0x"]
    console = boot_until(kernels["pvh"], kernels["initrd"], wanted, BOOT_TIMEOUT_S,
                         extra=("--machine", "pc", "--device", "virtio-rng-pci"))
    print(console)
    for w in wanted:
        assert re.search(w, console, re.M), f"console lacks {w!r}"


@pytest.mark.skipif(os.environ.get("LIBVMM_SLOW_TESTS") != "1",
                    reason="the xz decompressor takes many minutes here; set LIBVMM_SLOW_TESTS=1")
def test_bzimage_reaches_kernel(kernels):
    console = boot_until(kernels["bzImage"], kernels["initrd"], WANTED[:2], 3600)
    for w in WANTED[:2]:
        assert re.search(w, console, re.M), f"console lacks {w!r}"
