"""vmm-run from the command line: help listings from the library's
introspection, exit statuses, the console, Ctrl-A x, and one clear error
line for each kind of bad input."""
import os
import runpy
import shutil
import socket
import subprocess
import time

import pytest

BUILD = os.environ.get("VMM_BUILD_DIR", "build")
VMM_RUN = os.path.join(BUILD, "tools", "vmm-run", "vmm-run")
GUESTS = os.path.join(BUILD, "tests", "guest")
EXIT_DEV = ["--device", "isa-debug-exit,iobase=0xf4,iosize=4"]

needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                               reason="/dev/kvm is missing or not accessible")


def run(*args, stdin=subprocess.DEVNULL, timeout=120, **kw):
    return subprocess.run([VMM_RUN, *args], stdin=stdin, capture_output=True, text=True,
                          timeout=timeout, **kw)


def guest(name):
    return os.path.join(GUESTS, name + ".elf")


def one_error_line(proc, text):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vmm-run: "), lines[0]
    assert text in lines[0], lines[0]


def test_help_and_version():
    p = run("--help")
    assert p.returncode == 0 and "--kernel FILE" in p.stdout and "Ctrl-A x" in p.stdout
    assert "--netdev SPEC" in p.stdout and "virtio-net-pci,netdev=ID" in p.stdout
    p = run("--version")
    assert p.returncode == 0 and p.stdout.startswith("vmm-run (libvmm) 0.")


def test_device_help_lists_types_from_the_library():
    p = run("--device", "help")
    assert p.returncode == 0
    for name in ("isa-serial", "isa-debug-exit", "virtio-net-pci", "virtio-net-device"):
        assert name in p.stdout
    p = run("--device", "isa-debug-exit,help")
    assert p.returncode == 0
    assert "iobase" in p.stdout and "(default 0x501)" in p.stdout
    p = run("--machine", "help")
    assert p.returncode == 0 and "microvm" in p.stdout
    p = run("--cpu-model", "help")
    assert p.returncode == 0 and "x86-64-v2" in p.stdout


@pytest.mark.parametrize("args, text", [
    (["--bogus"], "unknown option '--bogus'"),
    (["--kernel"], "option '--kernel' needs a value"),
    ([], "no kernel given"),
    (["--kernel", "/nonexistent/vmlinuz"], "kernel /nonexistent/vmlinuz: No such file or directory"),
    (["--kernel", "/etc/hostname"], "not a bootable image: libvmm boots a Linux bzImage"),
    (["--kernel", "/etc"], "not a regular file"),
    (["--kernel", "K", "--memory", "12Q"], "unknown suffix 'Q'"),
    (["--kernel", "K", "--cpus", "0"], "cpus: 0 is out of range"),
    (["--kernel", "K", "--device", "floppy"], "unknown device type 'floppy'"),
    (["--kernel", "K", "--device", "isa-debug-exit,colour=red"], "isa-debug-exit: unknown property 'colour'"),
    (["--kernel", "K", "--machine", "pdp11"], "unknown machine type 'pdp11'"),
    (["--kernel", "K", "--machine", "microvm,bogus"], "--machine microvm,bogus: 'bogus' is not KEY=VALUE"),
    (["--kernel", "K", "--machine", "pc,colour=red"], "unknown property 'colour'"),
    (["--kernel", "K", "--machine", "microvm,virtio-mmio-cmdline=maybe"], "virtio-mmio-cmdline"),
    (["--kernel", "K", "--serial", "telnet"], "--serial 'telnet': expected stdio, file:PATH or none"),
    (["--kernel", "K", "stray"], "unexpected argument 'stray'"),
    (["--kernel", "K", "--netdev", "tap,id=n0"], "--netdev tap,id=n0: vmm_machine_add_netdev: "
     "netdev 'n0': tap: give ifname=NAME, fd=N or fds=A:B"),
    (["--kernel", "K", "--netdev", "tap,id=n0,fd=99"], "fd: 99 is not an open file descriptor"),
    (["--kernel", "K", "--netdev", "tap,id=n0,ifname=t0,speed=9"], "tap: unknown property 'speed'"),
    (["--kernel", "K", "--netdev", "vde,id=n0"], "unknown netdev type 'vde' (known: tap)"),
    (["--kernel", "K", "--netdev"], "option '--netdev' needs a value"),
    (["--kernel", "K", "--drive", "file=/etc/hostname,if=scsi"], "if=scsi: expected virtio or none"),
    (["--kernel", "K", "--drive", "file=/etc/hostname,cache=fast"],
     "cache=fast: expected one of writeback, none, writethrough, directsync, unsafe"),
    (["--kernel", "K", "--drive", "file=/etc/hostname,aio=io_uring"], "aio=io_uring: expected one of threads, native"),
    (["--kernel", "K", "--drive", "file=/etc/hostname,colour=red"], "unknown property 'colour'"),
    (["--kernel", "K", "--drive", "format=raw"], "file= is required"),
    (["--kernel", "K", "--drive", "file=/nonexistent.img,format=raw"], "/nonexistent.img"),
    (["--kernel", "K", "--drive", "file=/etc/hostname,format=vmdk"], "format=vmdk: expected one of raw, qcow2"),
    (["--kernel", "K", "--drive", "file=/etc/hostname,if=none,werror=stop"],
     "werror=stop: only with if=virtio (else give it to --device)"),
    (["--kernel", "K", "--drive", "file=/etc/hostname,format=raw,werror=sometimes"], "werror"),
])
def test_bad_input_gets_one_clear_line(args, text):
    one_error_line(run(*args), text)


@needs_kvm
def test_unknown_cpu_model_is_named():
    one_error_line(run("--kernel", guest("hello-exit"), "--cpu-model", "pentium"),
                   "unknown cpu model 'pentium' (known: host, x86-64, x86-64-v2)")


@needs_kvm
@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare")
def test_missing_dev_kvm_is_named():
    # A private mount namespace with an empty /dev: no /dev/kvm there.
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs none /dev && exec {VMM_RUN} --kernel {guest('hello-exit')}"],
                       capture_output=True, text=True, timeout=60)
    one_error_line(p, "/dev/kvm does not exist: KVM is not available")


@needs_kvm
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_dev_kvm_without_permission_is_named(tmp_path):
    kernel = tmp_path / "hello.elf"
    shutil.copy(guest("hello-exit"), kernel)
    os.chmod(tmp_path, 0o755)
    os.chmod(kernel, 0o644)
    st = os.stat("/dev/kvm")
    if st.st_mode & 0o006:
        pytest.skip("/dev/kvm is world-accessible here")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        VMM_RUN, "--kernel", str(kernel)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "LD_LIBRARY_PATH": os.path.join(BUILD, "lib")})
    one_error_line(p, "/dev/kvm: permission denied (add the user to the 'kvm' group)")


@needs_kvm
def test_exit_status_is_the_test_exit_status():
    p = run("--kernel", guest("serial"), "--append", "console-check", *EXIT_DEV)
    assert p.returncode == 33
    assert "hello from the guest" in p.stdout
    p = run("--kernel", guest("exception"), *EXIT_DEV)
    assert p.returncode == 77
    assert "exception 6 (#UD)" in p.stdout


@needs_kvm
def test_serial_to_file_and_none(tmp_path):
    log = tmp_path / "console.txt"
    p = run("--kernel", guest("hello-exit"), "--serial", f"file:{log}", *EXIT_DEV)
    assert p.returncode == 33 and p.stdout == ""
    assert "hello-exit: hello" in log.read_text()
    p = run("--kernel", guest("hello-exit"), "--serial", "none", *EXIT_DEV)
    assert p.returncode == 33 and p.stdout == ""


@needs_kvm
def test_machine_properties_after_the_type():
    p = run("--kernel", guest("serial"), "--append", "x=1", "--machine",
            "microvm,virtio-mmio-cmdline=on,cpus=2", "--device", "virtio-rng-device", *EXIT_DEV)
    assert p.returncode == 33, p.stdout + p.stderr
    assert 'cmdline "x=1 virtio_mmio.device=512@0xfeb00000:16"' in p.stdout
    p = run("--machine", "pc,help")
    assert p.returncode == 0 and "virtio-mmio-cmdline" in p.stdout


@needs_kvm
def test_smp_and_memory_options():
    p = run("--kernel", guest("smp"), "--cpus", "4", "--memory", "64M", "--cpu-model", "x86-64-v2",
            *EXIT_DEV)
    assert p.returncode == 33, p.stdout + p.stderr
    assert "smp: 4 cpus online" in p.stdout


@needs_kvm
def test_ctrl_a_x_quits():
    proc = subprocess.Popen([VMM_RUN, "--kernel", guest("pio-loop"), "--append", "count=100000000",
                             *EXIT_DEV], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    time.sleep(0.5)
    proc.stdin.write(b"\x01x")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"pio-loop: done" not in out


def disk_image(tmp_path, fmt):
    path = str(tmp_path / ("disk." + fmt))
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, "4M"], check=True)
    subprocess.run(["qemu-io", "-f", fmt, "-c", "write -P 0x5a 0 1M", path], check=True,
                   stdout=subprocess.DEVNULL)
    return path


def image_reads(path, fmt, pattern, offset, length):
    p = subprocess.run(["qemu-io", "-r", "-f", fmt, "-c", f"read -P {pattern} {offset} {length}",
                        path], capture_output=True, text=True)
    return p.returncode == 0 and "verification failed" not in p.stdout


@needs_kvm
@pytest.mark.parametrize("machine, transport, fmt, extra", [
    ("pc", "pci", "qcow2", ",cache=none,aio=native"),
    ("microvm", "mmio", "raw", ",cache=writethrough,werror=stop,rerror=report"),
])
def test_drive_if_virtio_adds_the_disk(tmp_path, machine, transport, fmt, extra):
    path = disk_image(tmp_path, fmt)
    p = run("--kernel", guest("virtio/virtio-blk"), "--machine", machine,
            "--append", f"transport={transport} getid=1 serial=s{machine}", *EXIT_DEV,
            "--drive", f"file={path},format={fmt},discard=unmap,serial=s{machine}{extra}")
    assert p.returncode == 33, p.stdout + p.stderr
    assert "virtio-blk: ok" in p.stdout
    assert image_reads(path, fmt, "0xa5", 0, 4096) and image_reads(path, fmt, "0x3c", 4096, 4096)
    assert image_reads(path, fmt, "0", 65536, 65536) and image_reads(path, fmt, "0x5a", 256 << 10, 4096)
    assert not image_reads(path, fmt, "0x5a", 0, 4096)   # the check itself can fail


@needs_kvm
def test_drive_if_none_with_a_device_and_readonly(tmp_path):
    path = disk_image(tmp_path, "qcow2")
    p = run("--kernel", guest("virtio/virtio-blk"), "--machine", "pc", *EXIT_DEV,
            "--append", "transport=pci ro=1 getid=1 serial=abc",
            "--drive", f"file={path},if=none,id=hd0,readonly=on",
            "--device", "virtio-blk-pci,drive=hd0,serial=abc")
    assert p.returncode == 33, p.stdout + p.stderr
    assert "virtio-blk: write to a read-only disk: IOERR" in p.stdout
    assert "virtio-blk: serial 'abc'" in p.stdout
    assert image_reads(path, "qcow2", "0x5a", 0, 1 << 20)


@needs_kvm
def test_drive_if_none_without_a_device_is_not_a_disk(tmp_path):
    path = disk_image(tmp_path, "raw")
    p = run("--kernel", guest("virtio/virtio-blk"), "--machine", "pc", *EXIT_DEV,
            "--append", "transport=pci", "--drive", f"file={path},format=raw,if=none,id=hd0")
    assert p.returncode == 35, p.stdout + p.stderr
    assert "no virtio device 2 on PCI" in p.stdout


# ---- --chardev and the virtio-console ports -------------------------------------------------

def test_chardev_help_lists_backends_and_keys_from_the_library():
    p = run("--chardev", "help")
    assert p.returncode == 0
    for name in ("null", "stdio", "fd", "file", "socket"):
        assert "\n  %s " % name in p.stdout
    p = run("--chardev", "socket,help")
    assert p.returncode == 0
    assert "reconnect" in p.stdout and "server" in p.stdout and "(default off)" in p.stdout
    p = run("--device", "virtserialport,help")
    assert p.returncode == 0 and "name" in p.stdout and "bus" in p.stdout
    one_error_line(run("--chardev", "tcp,help"), "unknown chardev backend 'tcp'")


@pytest.mark.parametrize("args, text", [
    (["--chardev", "tcp,id=c0"],
     "unknown chardev backend 'tcp' (known: null, stdio, fd, file, socket)"),
    (["--chardev", "null"], "null: chardevs need id="),
    (["--chardev", "socket,id=c0"], "chardev 'c0': socket needs path="),
    (["--chardev", "socket,id=c0,path=/tmp/x.sock,server=on,wait=on"], "wait=on is not supported"),
    (["--chardev", "socket,id=c0,path=/tmp/x.sock,server=on,reconnect=2"],
     "reconnect= is for client sockets"),
    (["--chardev", "socket,id=c0,path=/nonexistent/vmm.sock"],
     "chardev 'c0': connect /nonexistent/vmm.sock: No such file or directory"),
    (["--chardev", "socket,id=c0,path=/tmp/" + "x" * 120], "longer than 107 bytes"),
    (["--chardev", "file,id=f,path=/nonexistent/dir/out"],
     "/nonexistent/dir/out: No such file or directory"),
    (["--chardev", "fd,id=f,in=987"], "in=987 out=-1: not an open file descriptor"),
    (["--chardev", "fd,id=f"], "fd needs in=FD and/or out=FD"),
    (["--chardev", "fd,id=f,in=x"], "chardev 'f': fd: in: 'x' is not a number"),
    (["--chardev", "socket,id=c0,path=/tmp/c.sock,reconnect=3601"],
     "socket: reconnect: 3601 is out of range (0 to 3600)"),
    (["--chardev", "null,id=a,colour=red"], "null: unknown property 'colour'"),
    (["--chardev", "null,id=a", "--chardev", "null,id=a"], "a chardev with id 'a' exists already"),
    (["--chardev", "stdio,id=s"], "the serial console uses stdio already"),
    (["--device", "virtio-serial-pci,max_ports=16"], "max_ports"),
])
def test_bad_chardev_input_gets_one_clear_line(args, text):
    one_error_line(run("--kernel", "K", *args), text)


@needs_kvm
@pytest.mark.parametrize("devices, text", [
    (["virtio-serial-pci", "virtserialport,chardev=nope"], "chardev 'nope' does not exist"),
    (["virtserialport,chardev=c"], "no virtio-serial device"),
    (["virtio-serial-pci,id=vs0", "virtserialport,chardev=c,bus=vs9.0"],
     "no virtio-serial device 'vs9.0'"),
    (["virtio-serial-pci", "virtserialport,chardev=c", "virtconsole,chardev=c"],
     "chardev 'c' is already used by virtio-serial-pci port 1"),
    (["virtio-serial-pci,max_ports=2", "virtserialport,chardev=c,nr=2"],
     "nr=2: the device has max_ports=2"),
    (["virtio-serial-pci,chardev=c", "virtconsole,chardev=d,nr=0"], "port 0 is taken"),
    (["virtio-serial-pci", "virtserialport,chardev=c,name=" + "n" * 128],
     "name must have 1 to 127"),
])
def test_bad_port_devices_are_named(devices, text):
    args = ["--kernel", guest("hello-exit"), "--machine", "pc", "--chardev", "null,id=c",
            "--chardev", "null,id=d"]
    for d in devices:
        args += ["--device", d]
    one_error_line(run(*args), text)


# The guest runners' helper: connect, retrying until the machine listens.
connect_unix = runpy.run_path(os.path.join(os.environ.get("VMM_SOURCE_DIR", "."), "tests", "guest",
                                           "run-qemu.py"))["connect_unix"]



def read_until(s, needle, timeout=60):
    s.settimeout(timeout)
    data = b""
    while needle not in data:
        chunk = s.recv(4096)
        assert chunk, "the port closed after %r" % data
        data += chunk
    return data


def run_console_guest(tmp_path, machine, devices, console_spec, pass_fds=()):
    """vmm-run with the virtio-console guest: its named port on a Unix socket
    where a first client connects and leaves (the server then takes the next
    one) and a second greets, reads the guest's line and replies.  Returns
    (exit status, serial console text, stderr)."""
    sock = str(tmp_path / "port.sock")
    args = ["--kernel", os.path.join(GUESTS, "virtio", "virtio-console.elf"), "--machine", machine,
            "--append", "transport=" + ("pci" if machine == "pc" else "mmio"),
            "--serial", f"file:{tmp_path / 'serial.txt'}", *EXIT_DEV,
            "--chardev", console_spec,
            "--chardev", f"socket,id=port,path={sock},server=on,wait=off"]
    for d in devices:
        args += ["--device", d]
    proc = subprocess.Popen([VMM_RUN, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=pass_fds)
    try:
        connect_unix(sock, 30, required=True).close()
        with connect_unix(sock, 30, required=True) as peer:
            peer.sendall(b"early bird\n")
            line = read_until(peer, b"\n")
            assert line == b"hello from the guest on org.libvmm.test.0\n"
            peer.sendall(b"reply: " + line)
            out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert not os.path.exists(sock), "the server socket is removed when the machine ends"
    return proc.returncode, (tmp_path / "serial.txt").read_text(), err.decode()


PC_PORTS = ["virtio-serial-pci", "virtconsole,chardev=con",
            "virtserialport,chardev=port,name=org.libvmm.test.0"]


@needs_kvm
@pytest.mark.parametrize("machine, devices", [
    ("pc", PC_PORTS),
    ("microvm", ["virtio-console-device,chardev=con",
                 "virtserialport,chardev=port,name=org.libvmm.test.0"]),
])
def test_console_ports_through_sockets_and_files(tmp_path, machine, devices):
    console = tmp_path / "console.txt"
    status, serial, err = run_console_guest(tmp_path, machine, devices,
                                            f"file,id=con,path={console}")
    assert status == 33, serial + err
    assert "virtio-console: ok" in serial
    assert console.read_text() == "emerg: ok\nconsole: hello from port 0\n"


@needs_kvm
def test_a_console_pipe_nobody_reads_does_not_kill_the_vmm(tmp_path):
    """Writing to a pipe whose reader is gone raises SIGPIPE, which would end
    vmm-run (default disposition): the chardev takes EPIPE instead."""
    r, w = os.pipe()
    os.close(r)
    try:
        status, serial, err = run_console_guest(tmp_path, "pc", PC_PORTS, f"fd,id=con,out={w}",
                                                pass_fds=(w,))
    finally:
        os.close(w)
    assert status == 33, serial + err
    assert "virtio-console: console line written" in serial
