"""The libvmm Python package on real guests: machines from keyword
arguments, devices, life-cycle calls, events as callbacks and as an
iterator, exceptions with the library's message and errno, queries, logs,
introspection and QMP through the package."""
import errno
import os
import socket
import threading
import time

import pytest

import libvmm

BUILD = os.environ.get("VMM_BUILD_DIR", "build")
GUESTS = os.path.join(BUILD, "tests", "guest")
EXIT_DEV = "isa-debug-exit,iobase=0xf4,iosize=4"
needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                               reason="/dev/kvm is missing or not accessible")


def guest(name):
    return os.path.join(GUESTS, name + ".elf")


def loop_machine(**kw):
    return libvmm.Machine(kernel=guest("pio-loop"), cmdline="count=100000000", devices=[EXIT_DEV],
                          **kw)


# ---- without a guest ----------------------------------------------------------------

def test_version_and_introspection():
    assert libvmm.version().count(".") == 2
    assert ("microvm" in [n for n, _ in libvmm.list_types("machine")])
    props = {p.name: p for p in libvmm.list_properties("machine", "microvm")}
    assert props["memory"].type == "size" and props["memory"].default == "256M"
    dev = {p.name: p for p in libvmm.list_properties("device", "isa-debug-exit")}
    assert dev["iobase"].type == "u32"
    assert libvmm.parse_size("1.5G") == 3 << 29


def test_errors_carry_message_and_errno():
    with pytest.raises(libvmm.NotFoundError) as e:
        libvmm.Machine("no-such-machine")
    assert e.value.errno == errno.ENOENT and "no-such-machine" in e.value.message
    with pytest.raises(libvmm.InvalidArgumentError) as e:
        libvmm.parse_size("12Q")
    assert e.value.errno == errno.EINVAL and isinstance(e.value, libvmm.Error)
    with pytest.raises(libvmm.NotFoundError):
        libvmm.list_properties("device", "nope")
    with libvmm.Machine() as m:
        with pytest.raises(libvmm.StateError) as e:
            m.pause()
        assert e.value.errno == errno.EBUSY and "created" in e.value.message
        with pytest.raises(libvmm.Error) as e:
            m.set("cpus", "0")
        with pytest.raises(libvmm.InvalidArgumentError):
            m.start()  # no kernel


def test_properties_as_keyword_arguments():
    with libvmm.Machine(memory="512M", cpus=2, cpu_model="x86-64", reboot=False,
                        name="kw") as m:
        assert m.get("memory") in ("512M", "536870912")
        assert m.get("cpu_model") == "x86-64" and m.get("reboot") in ("off", "false")
        assert m.status["name"] == "kw" and m.status["status"] == "prelaunch"
        assert m.memory["ram_size"] == 512 << 20
        assert m.vcpus() == []


def test_devices_add_list_remove_before_start():
    events = []
    with libvmm.Machine(on_event=events.append) as m:
        d = m.add_device("isa-debug-exit", id="dbg", iobase=0xf4, iosize=4)
        assert d.id == "dbg" and d.type == "isa-debug-exit"
        mine = [x for x in m.devices() if x.id == "dbg"]
        assert mine and "iobase=244" in mine[0].properties and not mine[0].realized
        d.remove()
        assert not [x for x in m.devices() if x.id == "dbg"]
        assert [(e.name, e.device) for e in events] == [("DEVICE_DELETED", "dbg")]
        with pytest.raises(libvmm.NotFoundError):
            m.remove_device("dbg")


def test_context_manager_frees_on_error():
    with pytest.raises(RuntimeError):
        with libvmm.Machine() as m:
            raise RuntimeError("boom")
    with pytest.raises(libvmm.StateError):
        m.state  # closed
    m.close()  # twice is fine


# ---- with guests --------------------------------------------------------------------------

@needs_kvm
def test_run_to_completion_with_console_and_events():
    seen = []
    chunks = []
    with libvmm.Machine(kernel=guest("serial"), cmdline="console-check", devices=[EXIT_DEV],
                        on_event=seen.append, on_serial=chunks.append) as m:
        m.start()
        events = list(m.events(timeout=60))
        assert [e.name for e in events] == ["SHUTDOWN"]
        assert events[0].guest and events[0].reason == "guest-shutdown"
        m.wait(10)
        assert (m.state, m.exit_reason, m.exit_code) == ("ended", "test", 33)
        assert "serial: ok" in m.console
        assert b"".join(chunks).decode() == m.console
        assert seen == events
        assert m.status["status"] == "shutdown"


@needs_kvm
def test_pause_resume_reset_stop_in_order():
    callback_names = []
    with loop_machine(on_event=lambda e: callback_names.append(e.name)) as m:
        m.start()
        assert m.state == "running"
        deadline = time.monotonic() + 10  # 0 until the vCPU thread has run
        while m.vcpus()[0].thread_id == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        vcpus = m.vcpus()
        assert len(vcpus) == 1 and vcpus[0].thread_id > 0
        with open("/proc/self/task/%d/comm" % vcpus[0].thread_id) as f:
            assert f.read().strip() == "vcpu 0"
        m.pause()
        assert m.status == dict(m.status, state="paused", running=False, status="paused")
        m.resume()
        m.reset()
        with pytest.raises(libvmm.TimeoutError):
            m.wait(0.1)
        m.stop()
        names = [e.name for e in m.events(timeout=30)]
        assert names == ["STOP", "RESUME", "RESET", "SHUTDOWN"]
        assert callback_names == names
        assert m.exit_reason == "stopped"


@needs_kvm
def test_event_iterator_times_out():
    with loop_machine() as m:
        m.start()
        with pytest.raises(libvmm.TimeoutError):
            next(m.events(timeout=0.2))


@needs_kvm
def test_machine_log_file_and_callback(tmp_path):
    path = tmp_path / "vm.log"
    lines = []
    with loop_machine() as m:
        m.set_log_file(str(path), libvmm.LOG_DEBUG)
        m.set_log_callback(lambda level, domain, msg: lines.append((domain, msg)))
        m.start()
        m.pause()
        m.stop()
        m.wait(10)
    text = path.read_text()
    assert "info event: STOP" in text and "stopped by request" in text
    assert ("event", "STOP") in lines and any("stopped" in msg for _, msg in lines)


@needs_kvm
def test_two_machines_keep_their_logs_apart(tmp_path):
    with loop_machine() as a, loop_machine() as b:
        a.set_log_file(str(tmp_path / "a.log"))
        b.set_log_file(str(tmp_path / "b.log"))
        a.start()
        b.start()
        a.pause()
        a.stop()
        b.stop()
    assert "event: STOP" in (tmp_path / "a.log").read_text()
    assert "event: STOP" not in (tmp_path / "b.log").read_text()


@needs_kvm
def test_qmp_through_the_package():
    with loop_machine() as m:
        assert m.qmp("query-status")["status"] == "prelaunch"
        m.qmp("device_add", driver="isa-serial", id="com2", iobase=0x2f8, irq=3)
        assert any(d.id == "com2" for d in m.devices())
        m.qmp("device_del", id="com2")
        m.qmp("cont")  # starts a machine in prelaunch, as QEMU's -S
        assert m.qmp("query-status") == {"status": "running", "singlestep": False,
                                          "running": True}
        with pytest.raises(libvmm.QMPError) as e:
            m.qmp("device_add", driver="isa-serial")
        assert e.value.error_class == "GenericError" and "hot-plug" in e.value.desc
        assert m.qmp_raw({"execute": "nope", "id": 3})["error"]["class"] == "CommandNotFound"
        m.qmp("stop")
        assert next(m.events(timeout=5)).name == "DEVICE_DELETED"
        assert next(m.events(timeout=5)).name == "STOP"


@needs_kvm
def test_device_added_over_qmp_before_start_is_used_by_the_guest(tmp_path):
    path = str(tmp_path / "qmp.sock")
    with libvmm.Machine(kernel=guest("hello-exit")) as m:
        m.serve_qmp("unix:%s,server,nowait" % path)
        with libvmm.QMPClient(path) as c:
            assert c.command("query-status")["status"] == "prelaunch"
            c.command("device_add", driver="isa-debug-exit", iobase=0xf4, iosize=4, id="exit")
            c.command("cont")
            ev = c.event("SHUTDOWN", timeout=60)
            assert ev["data"] == {"guest": True, "reason": "guest-shutdown"}
        m.wait(10)
        assert (m.exit_reason, m.exit_code) == ("test", 33)
    assert not os.path.exists(path)  # the socket goes with the machine


@needs_kvm
def test_events_from_many_threads_stay_ordered():
    with loop_machine() as m:
        m.start()
        lock = threading.Lock()

        def toggle():
            for _ in range(20):
                with lock:
                    m.pause()
                    m.resume()
        threads = [threading.Thread(target=toggle) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        m.stop()
        names = [e.name for e in m.events(timeout=30)]
        assert names == ["STOP", "RESUME"] * 60 + ["SHUTDOWN"]


def test_socket_module_is_not_needed_for_qmp_errors():
    assert socket  # the QMP client uses plain Unix sockets


def test_block_nodes_query_follows_blockdev_add_and_del(tmp_path):
    img, img2 = str(tmp_path / "d.qcow2"), str(tmp_path / "e.qcow2")
    libvmm.Block.create(img, "qcow2", 1 << 20)
    libvmm.Block.create(img2, "qcow2", 1 << 20)
    m = libvmm.Machine("microvm")
    try:
        assert m.block_nodes() == []
        m.qmp("blockdev-add", **{"node-name": "disk0", "driver": "qcow2",
                                 "file": {"driver": "file", "filename": img}})
        m.qmp("blockdev-add", **{"node-name": "disk1", "driver": "qcow2", "read-only": True,
                                 "file": {"driver": "file", "filename": img2}})
        nodes = m.block_nodes()
        assert [(n.name, n.driver, n.read_only) for n in nodes] == [
            ("disk0", "qcow2", False), ("disk1", "qcow2", True)]
        assert nodes[0].filename == img
        m.qmp("blockdev-del", **{"node-name": "disk0"})
        assert [n.name for n in m.block_nodes()] == ["disk1"]
    finally:
        m.close()


def test_netdevs_errors_and_link():
    with libvmm.Machine("pc") as m:
        with pytest.raises(libvmm.Error, match="tap: give ifname=NAME, fd=N or fds=A:B"):
            m.add_netdev("tap,id=n0")
        with pytest.raises(libvmm.Error, match="tap: vnet_hdr: 'sometimes' is not on or off"):
            m.add_netdev("tap", id="n0", ifname="t0", vnet_hdr="sometimes")
        with pytest.raises(libvmm.NotFoundError, match="no netdev or NIC named 'n0'"):
            m.set_link("n0", False)
        if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
            return
        # A tap fd the caller opened: TUNGETIFF tells libvmm what it is.
        import fcntl
        import struct
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"vmmpy%d" % os.getpid(),
                                                    0x0002 | 0x1000 | 0x4000))
            m.add_netdev("tap", id="n0", fd=fd)
        finally:
            os.close(fd)                 # the machine keeps its own duplicate
        m.add_device("virtio-net-pci,id=nic0,netdev=n0")
        m.set_link("nic0", False)
        m.set_link("n0", True)
        with pytest.raises(libvmm.Error, match="a netdev with id 'n0' exists already"):
            m.add_netdev("tap,id=n0,ifname=t1")
