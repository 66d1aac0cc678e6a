"""Chardevs and virtio-console ports through the Python package on real
guests: a named port on a Unix socket (server and reconnecting client), the
console port on a pipe, VSERPORT_CHANGE events when the guest opens and
closes its port, and backpressure: a port the guest never opens is not read
into memory without bound."""
import errno
import os
import shutil
import subprocess
import runpy
import socket
import threading
import time

import pytest

import libvmm

BUILD = os.environ.get("VMM_BUILD_DIR", "build")
CONSOLE_GUEST = os.path.join(BUILD, "tests", "guest", "virtio", "virtio-console.elf")
LOOP_GUEST = os.path.join(BUILD, "tests", "guest", "pio-loop.elf")
EXIT_DEV = "isa-debug-exit,iobase=0xf4,iosize=4"
PORT = "org.libvmm.test.0"
needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                               reason="/dev/kvm is missing or not accessible")


def test_chardev_backends_are_introspectable():
    assert [n for n, _ in libvmm.list_types("chardev")] == ["null", "stdio", "fd", "file", "socket"]
    props = {p.name: p for p in libvmm.list_properties("chardev", "socket")}
    assert props["server"].type == "bool" and props["server"].default == "off"
    assert props["reconnect"].type == "u32"
    ports = {p.name for p in libvmm.list_properties("device", "virtserialport")}
    assert {"chardev", "name", "nr", "bus"} <= ports


def test_chardev_errors_carry_the_librarys_message():
    with libvmm.Machine() as m:
        m.add_chardev("null", id="n0")
        with pytest.raises(libvmm.Error) as e:
            m.add_chardev("null", id="n0")
        assert "a chardev with id 'n0' exists already" in str(e.value)
        assert e.value.errno == errno.EEXIST
        with pytest.raises(libvmm.InvalidArgumentError) as e:
            m.add_chardev("socket,id=s,path=/tmp/x.sock,server=on,wait=on")
        assert "wait=on is not supported" in str(e.value)
        with pytest.raises(libvmm.Error) as e:
            m.add_chardev("socket", id="c", path="/nonexistent/x.sock")
        assert "connect /nonexistent/x.sock" in str(e.value)


def test_a_listening_chardev_takes_connections_before_the_machine_starts(tmp_path):
    path = str(tmp_path / "s.sock")
    with libvmm.Machine() as m:
        m.add_chardev("socket", id="s", path=path, server=True, wait=False)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)   # queued in the backlog until the machine runs
    assert not os.path.exists(path), "the socket file goes with the machine"


def test_stdio_serves_one_chardev(tmp_path):
    """Two stdio chardevs would read the same stdin, each getting part of
    what the user types: the second is refused, as QEMU does."""
    with libvmm.Machine() as m:
        m.add_chardev("stdio", id="a")
        with pytest.raises(libvmm.Error) as e:
            m.add_chardev("stdio", id="b")
        assert "stdio is used by chardev 'a' already" in str(e.value)
        assert e.value.errno == errno.EBUSY


def test_a_failed_listen_leaves_other_files_alone(tmp_path):
    """A regular file at a server socket's path is an error, and it stays:
    the cleanup after the failed bind must not unlink what it did not create."""
    path = tmp_path / "precious.txt"
    path.write_bytes(b"keep me")
    with libvmm.Machine() as m:
        with pytest.raises(libvmm.Error) as e:
            m.add_chardev("socket", id="s", path=str(path), server=True, wait=False)
        assert "bind" in str(e.value)
    assert path.read_bytes() == b"keep me"


def test_a_socket_file_replaced_by_someone_else_is_not_removed(tmp_path):
    """The machine removes its own socket file, not one another server put at
    the same path since (the same path in a second machine replaces it)."""
    path = str(tmp_path / "s.sock")
    with libvmm.Machine() as first:
        first.add_chardev("socket", id="s", path=path, server=True, wait=False)
        with libvmm.Machine() as second:
            second.add_chardev("socket", id="s", path=path, server=True, wait=False)
            first.close()
            assert os.path.exists(path), "the first machine removed the second one's socket"
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
        assert not os.path.exists(path)


class Peer(threading.Thread):
    """The host end of port org.libvmm.test.0: greets, waits for the guest's
    line, replies "reply: " + line."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock, self.line, self.error = sock, b"", None

    def run(self):
        try:
            with self.sock:
                self.sock.settimeout(60)
                self.sock.sendall(b"early bird\n")
                while not self.line.endswith(b"\n"):
                    chunk = self.sock.recv(4096)
                    if not chunk:
                        raise EOFError("the port closed after %r" % self.line)
                    self.line += chunk
                self.sock.sendall(b"reply: " + self.line)
                time.sleep(0.5)   # let the guest read it before we hang up
        except Exception as e:    # reported by the test
            self.error = e


# The guest runners' helper: connect, retrying until the machine listens.
connect_unix = runpy.run_path(os.path.join(os.environ.get("VMM_SOURCE_DIR", "."), "tests", "guest",
                                           "run-qemu.py"))["connect_unix"]



def console_machine(chardev_spec, console_fd, events, cmdline="transport=pci"):
    return libvmm.Machine("pc", kernel=CONSOLE_GUEST, cmdline=cmdline, reboot=False,
                          chardevs=["fd,id=con,out=%d" % console_fd, chardev_spec],
                          devices=[EXIT_DEV, "virtio-serial-pci,id=vs0", "virtconsole,chardev=con",
                                   "virtserialport,id=port1,chardev=port,name=%s,bus=vs0.0" % PORT],
                          on_event=events.append)


def read_all(fd):
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def serve_port(tmp_path, cmdline="transport=pci", while_running=None):
    """Boot the console guest with port1 on a listening socket and a Peer
    on it; returns (peer, what port 0 wrote, events, serial console)."""
    path = str(tmp_path / "port.sock")
    r, w = os.pipe()
    events = []
    try:
        with console_machine("socket,id=port,path=%s,server=on,wait=off" % path, w, events,
                             cmdline=cmdline) as m:
            m.start()
            if while_running:
                while_running(m)
            peer = Peer(connect_unix(path, 30, required=True))
            peer.start()
            m.wait(timeout=120)
            peer.join(10)
            assert m.exit_code == 33, m.console
            serial = m.console
        assert peer.error is None, peer.error
        console = read_all(r)
    finally:
        os.close(r)
        os.close(w)
    changes = [(e.device, e.message) for e in events if e.name == "VSERPORT_CHANGE"]
    return peer, console, changes, serial


def add_chardev_too_late(m):
    with pytest.raises(libvmm.StateError) as e:
        m.add_chardev("null", id="late")
    assert "this needs it created" in str(e.value)


@needs_kvm
def test_named_port_round_trip_with_events(tmp_path):
    # linger: the close comes within a second of the open, so it is reported
    # a second after it (one report a second per port, as QEMU).
    peer, console, changes, _ = serve_port(tmp_path, "transport=pci linger_ms=1500",
                                           while_running=add_chardev_too_late)
    assert peer.line == b"hello from the guest on %s\n" % PORT.encode()
    assert console == b"emerg: ok\nconsole: hello from port 0\n"
    # Port 0 (virtconsole, no id) opens too; port1 opens and closes.
    assert ("port1", "open") in changes and ("port1", "closed") in changes, changes
    assert changes.index(("port1", "open")) < changes.index(("port1", "closed"))


@needs_kvm
def test_a_guest_toggling_its_port_gets_one_report_a_second(tmp_path):
    """VSERPORT_CHANGE is rate-limited per port as QEMU does it (one a second,
    the latest state): a guest opening and closing its port in a loop must
    not flood the embedder and QMP clients (whose unread output is capped:
    a flood would get the management's connection dropped)."""
    _, _, changes, serial = serve_port(tmp_path, "transport=pci toggle=3000 linger_ms=1500")
    assert "port toggled 3000 times" in serial
    port1 = [c for c in changes if c[0] == "port1"]
    assert len(port1) <= 8, "%d VSERPORT_CHANGE events for port1" % len(port1)
    assert port1[0] == ("port1", "open") and port1[-1] == ("port1", "closed"), port1


@needs_kvm
def test_a_host_hanging_up_on_a_full_port_returns_every_buffer(tmp_path):
    """The guest queues 8 x 64 KiB on its port; the host never reads (the
    device holds a partly written buffer, the rest wait in the ring) and hangs
    up: the held buffer and all those behind it come back to the guest."""
    path = str(tmp_path / "port.sock")
    r, w = os.pipe()
    try:
        with console_machine("socket,id=port,path=%s,server=on,wait=off" % path, w, [],
                             cmdline="transport=pci hangup=1") as m:
            m.start()
            with connect_unix(path, 30, required=True):
                deadline = time.monotonic() + 30
                while "x 64 KiB posted" not in m.console and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(1)   # let the device fill the socket and hold a buffer
            m.wait(timeout=60)
            assert m.exit_code == 33, m.console
            assert "hangup: all 8 buffers returned" in m.console
    finally:
        os.close(r)
        os.close(w)


@needs_kvm
def test_a_terminal_nobody_reads_does_not_stall_other_ports(tmp_path):
    """Port 0 writes to a pseudo-terminal whose master is never read: a
    blocking write() there would wait for room and stall the I/O thread (and
    every other port); the round trip on port 1 must still complete."""
    import pty
    path = str(tmp_path / "port.sock")
    master, slave = pty.openpty()
    try:
        with console_machine("socket,id=port,path=%s,server=on,wait=off" % path, slave, [],
                             cmdline="transport=pci flood0=1") as m:
            m.start()
            peer = Peer(connect_unix(path, 30, required=True))
            peer.start()
            try:
                m.wait(timeout=60)
            finally:
                if m.state != "ended":
                    os.close(master)   # unblock a stuck write so the machine can go
                    master = None
            peer.join(10)
            assert m.exit_code == 33, m.console
            assert "flood0: 8 x 64 KiB queued on port 0" in m.console
        assert peer.error is None, peer.error
    finally:
        if master is not None:
            os.close(master)
        os.close(slave)


@needs_kvm
def test_a_device_reset_reports_the_open_port_closed(tmp_path):
    _, _, changes, serial = serve_port(tmp_path, "transport=pci reset_open=1 linger_ms=1500")
    assert "device reset with the port open" in serial
    assert changes[-1] == ("port1", "closed") and ("port1", "open") in changes, changes


@needs_kvm
def test_client_socket_reconnects_until_the_host_listens(tmp_path):
    path = str(tmp_path / "host.sock")
    r, w = os.pipe()
    try:
        with console_machine("socket,id=port,path=%s,reconnect=1" % path, w, []) as m:
            m.start()
            time.sleep(1.5)   # the machine tries and fails to connect meanwhile
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(path)
                server.listen(1)
                server.settimeout(30)
                conn, _ = server.accept()
            peer = Peer(conn)
            peer.start()
            m.wait(timeout=120)
            peer.join(10)
            assert m.exit_code == 33, m.console
        assert peer.error is None, peer.error
    finally:
        os.close(r)
        os.close(w)


@needs_kvm
def test_a_closed_port_is_not_read_without_bound(tmp_path):
    """The guest never drives the device: what the host sends stays in the
    socket, so a nonblocking sender runs into EAGAIN after about the socket
    buffers (a VMM reading everything into memory would take it all)."""
    path = str(tmp_path / "port.sock")
    with libvmm.Machine("pc", kernel=LOOP_GUEST, cmdline="count=100000000",
                        chardevs=["socket,id=port,path=%s,server=on,wait=off" % path],
                        devices=[EXIT_DEV, "virtio-serial-pci",
                                 "virtserialport,chardev=port,name=%s" % PORT]) as m:
        m.start()
        with connect_unix(path, 30, required=True) as s:
            s.setblocking(False)
            sent, chunk, limit = 0, b"x" * 65536, 64 << 20
            deadline = time.monotonic() + 30
            while sent < limit and time.monotonic() < deadline:
                try:
                    sent += s.send(chunk)
                except BlockingIOError:
                    time.sleep(0.2)   # give the VMM the chance to read more, if it wrongly would
                    try:
                        sent += s.send(chunk)
                    except BlockingIOError:
                        break
            assert sent < 16 << 20, "the VMM took %d bytes for a port nobody opened" % sent
        m.stop()


@needs_kvm
def test_a_server_out_of_descriptors_does_not_spin(tmp_path):
    """accept() failing with EMFILE leaves the listening socket readable: the
    I/O thread must back off instead of retrying in a busy loop.  The guest
    has exited, so the process's CPU time is the I/O thread's."""
    import resource
    path = str(tmp_path / "port.sock")
    with libvmm.Machine("pc", kernel=LOOP_GUEST, cmdline="count=1",
                        chardevs=["socket,id=port,path=%s,server=on,wait=off" % path],
                        devices=[EXIT_DEV, "virtio-serial-pci",
                                 "virtserialport,chardev=port,name=%s" % PORT]) as m:
        m.start()
        m.wait(timeout=60)
        client = socket.socket(socket.AF_UNIX)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.dup(0)   # what the machine's accept() would get
        os.close(lowest_free)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            client.connect(path)   # the machine's accept() fails: EMFILE
            before = time.process_time()
            time.sleep(2)
            spent = time.process_time() - before
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            client.close()
        assert spent < 0.5, "the I/O thread spent %.2f s of CPU in 2 s" % spent


VMM_RUN = os.path.join(BUILD, "tools", "vmm-run", "vmm-run")


def vmm_run_argv(qmp, sock):
    return [VMM_RUN, "--machine", "pc", "--kernel", CONSOLE_GUEST,
            "--append", "transport=pci linger_ms=1500", "--serial", "none", "--device", EXIT_DEV,
            "--qmp", "unix:%s,server,nowait" % qmp,
            "--chardev", "null,id=con",
            "--chardev", "socket,id=port,path=%s,server=on,wait=off" % sock,
            "--device", "virtio-serial-pci,id=vs0", "--device", "virtconsole,chardev=con",
            "--device", "virtserialport,id=port1,chardev=port,name=%s,bus=vs0.0" % PORT]


def qemu_argv(qmp, sock):
    return ["qemu-system-x86_64", "-machine", "q35", "-enable-kvm", "-cpu",
            "host,-arch-capabilities", "-m", "256M", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-serial", "none", "-kernel", CONSOLE_GUEST,
            "-append", "transport=pci linger_ms=1500", "-device", EXIT_DEV,
            "-qmp", "unix:%s,server=on,wait=off" % qmp,
            "-chardev", "null,id=con",
            "-chardev", "socket,id=port,path=%s,server=on,wait=off" % sock,
            "-device", "virtio-serial-pci,id=vs0", "-device", "virtconsole,chardev=con",
            "-device", "virtserialport,id=port1,chardev=port,name=%s,bus=vs0.0" % PORT]


@needs_kvm
@pytest.mark.parametrize("argv", [vmm_run_argv, qemu_argv], ids=["libvmm", "qemu"])
def test_vserport_change_over_qmp_matches_qemu(tmp_path, argv):
    """The guest opening and closing org.libvmm.test.0 reaches a QMP client as
    VSERPORT_CHANGE {"id": "port1", "open": true/false}, as QEMU sends it.
    The guest lingers 1.5 s after closing (QEMU 7.2 may otherwise exit
    before its monitor has sent the close).  The guest opens its port only
    once our peer is there, so the QMP client (connected first) sees both
    events."""
    from libvmm.qmp import QMPClient
    cmd = argv(str(tmp_path / "vm.qmp"), str(tmp_path / "port.sock"))
    if not shutil.which(cmd[0]):
        pytest.skip("%s is not installed" % cmd[0])
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        qmp_sock = connect_unix(str(tmp_path / "vm.qmp"), 30, required=True)
        qmp_sock.close()
        with QMPClient(str(tmp_path / "vm.qmp")) as qmp:
            peer = Peer(connect_unix(str(tmp_path / "port.sock"), 30, required=True))
            peer.start()
            opened = qmp.event("VSERPORT_CHANGE", timeout=60)
            while opened["data"].get("id") != "port1":
                opened = qmp.event("VSERPORT_CHANGE", timeout=60)
            closed = qmp.event("VSERPORT_CHANGE", timeout=60)
            peer.join(10)
        assert proc.wait(timeout=60) == 33
    finally:
        proc.kill()
        proc.wait()
    assert opened["data"] == {"id": "port1", "open": True}, opened
    assert closed["data"] == {"id": "port1", "open": False}, closed
    assert peer.error is None, peer.error


@needs_kvm
def test_server_serves_one_client_at_a_time(tmp_path):
    """A second client waits in the backlog while the first is served: the
    guest's data goes to the first only (not to both, not to the newest)."""
    path = str(tmp_path / "port.sock")
    r, w = os.pipe()
    try:
        with console_machine("socket,id=port,path=%s,server=on,wait=off" % path, w, []) as m:
            first = connect_unix(path, 30, required=True)
            second = connect_unix(path, 30, required=True)   # accepted by the kernel's backlog
            m.start()
            peer = Peer(first)
            peer.start()
            peer.join(60)
            assert peer.error is None, peer.error
            second.settimeout(0.5)
            with pytest.raises(socket.timeout):
                second.recv(1)   # not served: nothing reaches it while the first is there
            m.wait(timeout=60)
            assert m.exit_code == 33, m.console
            second.close()
    finally:
        os.close(r)
        os.close(w)
