"""The QMP server of libvmm driven through vmm-run --qmp: every command,
QEMU's error classes for bad input, events in order, several clients, and
clients that send garbage, huge messages or vanish."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from qmp_helpers import (EXIT_DEV, GUESTS, QMPError, needs_kvm, tmpdir, vmm_run)

pytestmark = needs_kvm


@pytest.fixture
def server():
    with tmpdir() as d, vmm_run(d, "--log", os.path.join(d, "vm.log")) as srv:
        srv.dir = d
        yield srv


@pytest.fixture
def qmp(server):
    with server.client() as c:
        yield c


def error_of(reply):
    assert "error" in reply, reply
    assert set(reply["error"]) == {"class", "desc"}, reply
    return reply["error"]["class"], reply["error"]["desc"]


# ---- greeting and negotiation ----------------------------------------------------

def test_greeting_and_negotiation(server):
    with server.client(negotiate=False) as c:
        qmp = c.greeting["QMP"]
        assert set(qmp) == {"version", "capabilities"}
        assert set(qmp["version"]["qemu"]) == {"major", "minor", "micro"}
        assert qmp["version"]["package"].startswith("libvmm ")
        assert qmp["capabilities"] == []
        assert error_of(c.execute("query-status")) == (
            "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
        assert error_of(c.execute("qmp_capabilities", {"enable": ["oob"]}))[0] == "GenericError"
        assert c.execute("qmp_capabilities") == {"return": {}}
        assert error_of(c.execute("qmp_capabilities"))[0] == "CommandNotFound"
        assert c.execute("query-status")["return"]["running"] is True


def test_id_is_echoed(qmp):
    for ident in (7, "abc", {"a": [1, 2]}, None):
        reply = qmp.execute("query-status", id=ident)
        assert reply.get("id") == ident
    assert qmp.execute("bogus", id="x")["id"] == "x"


# ---- every command -------------------------------------------------------------------

def test_queries(qmp, server):
    assert qmp.command("query-status") == {"status": "running", "singlestep": False,
                                           "running": True}
    version = qmp.command("query-version")
    assert version["package"].startswith("libvmm ") and isinstance(version["qemu"]["major"], int)
    assert qmp.command("query-name") == {}
    assert qmp.command("query-kvm") == {"enabled": True, "present": True}
    assert qmp.command("query-block") == []
    assert qmp.command("query-pci") == []
    names = {c["name"] for c in qmp.command("query-commands")}
    assert {"qmp_capabilities", "query-status", "query-version", "query-name", "query-cpus-fast",
            "query-block", "query-pci", "query-commands", "stop", "cont", "system_reset",
            "system_powerdown", "quit", "qom-list-types", "device-list-properties", "device_add",
            "device_del", "blockdev-add", "blockdev-del", "human-monitor-command"} <= names


def test_query_cpus_fast_gives_the_vcpu_threads(qmp, server):
    cpus = qmp.command("query-cpus-fast")
    assert [c["cpu-index"] for c in cpus] == [0]
    tid = cpus[0]["thread-id"]
    with open("/proc/%d/task/%d/comm" % (server.proc.pid, tid)) as f:
        assert f.read().strip() == "vcpu 0"
    assert cpus[0]["target"] == "x86_64" and set(cpus[0]["props"]) >= {"socket-id", "core-id"}


def test_stop_cont_events_in_order(qmp):
    assert qmp.command("stop") == {}
    assert qmp.command("query-status")["status"] == "paused"
    assert qmp.command("stop") == {}  # already paused: no second STOP
    assert qmp.command("cont") == {}
    assert qmp.command("query-status")["status"] == "running"
    assert qmp.command("system_reset") == {}
    names = [qmp.event()["event"] for _ in range(3)]
    assert names == ["STOP", "RESUME", "RESET"]
    assert qmp.events == []


def test_event_shape(qmp):
    qmp.command("system_reset")
    ev = qmp.event("RESET")
    assert set(ev) == {"timestamp", "event", "data"}
    assert set(ev["timestamp"]) == {"seconds", "microseconds"}
    assert abs(ev["timestamp"]["seconds"] - time.time()) < 60
    assert 0 <= ev["timestamp"]["microseconds"] < 1000000
    assert ev["data"] == {"guest": False, "reason": "host-qmp-system-reset"}


def test_system_powerdown(qmp):
    assert qmp.command("system_powerdown") == {}
    assert "data" not in qmp.event("POWERDOWN")


def test_types_and_properties(qmp):
    devices = {t["name"]: t["parent"] for t in qmp.command("qom-list-types", implements="device")}
    assert "isa-debug-exit" in devices and "isa-serial" in devices
    machines = [t["name"] for t in qmp.command("qom-list-types", implements="machine")]
    assert "microvm-machine" in machines and all(n.endswith("-machine") for n in machines)
    props = {p["name"]: p for p in qmp.command("device-list-properties",
                                               typename="isa-debug-exit")}
    assert props["iobase"]["type"] == "uint32" and props["iobase"]["default-value"] == 0x501
    with pytest.raises(QMPError) as e:
        qmp.command("device-list-properties", typename="nope")
    assert e.value.error_class == "DeviceNotFound"


def test_device_commands_on_a_running_machine(qmp):
    with pytest.raises(QMPError) as e:
        qmp.command("device_add", driver="isa-debug-exit", id="x", iobase=0x500)
    assert e.value.error_class == "GenericError" and "hot-plug is not supported yet" in e.value.desc
    with pytest.raises(QMPError) as e:
        qmp.command("device_add", driver="no-such-device")
    assert e.value.desc == "'no-such-device' is not a valid device model name"
    with pytest.raises(QMPError) as e:
        qmp.command("device_del", id="nope")
    assert (e.value.error_class, e.value.desc) == ("DeviceNotFound", "Device 'nope' not found")


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img is not installed")
def test_blockdev_add_and_del(qmp, server):
    image = os.path.join(server.dir, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "64M"], check=True)
    assert qmp.command("blockdev-add", driver="qcow2", node_name="disk0",
                       file={"driver": "file", "filename": image}) == {}
    nodes = qmp.command("query-named-block-nodes")
    assert [(n["node-name"], n["drv"], n["image"]["virtual-size"]) for n in nodes] == [
        ("disk0", "qcow2", 64 << 20)]
    assert "disk0: %s (qcow2)" % image in qmp.command("human-monitor-command",
                                                      command_line="info block")
    with pytest.raises(QMPError) as e:
        qmp.command("blockdev-add", driver="qcow2", node_name="disk0",
                    file={"driver": "file", "filename": image})
    assert "Duplicate" in e.value.desc
    with pytest.raises(QMPError) as e:
        qmp.command("blockdev-add", driver="qcow2", file={"driver": "file", "filename": image})
    assert "node-name" in e.value.desc
    with pytest.raises(QMPError) as e:
        qmp.command("blockdev-add", driver="qcow2", node_name="d1",
                    file={"driver": "file", "filename": image + ".missing"})
    assert e.value.error_class == "GenericError" and ".missing" in e.value.desc
    assert qmp.command("blockdev-del", node_name="disk0") == {}
    assert qmp.command("query-named-block-nodes") == []
    with pytest.raises(QMPError) as e:
        qmp.command("blockdev-del", node_name="disk0")
    assert e.value.desc == "Failed to find node with node-name='disk0'"


def test_human_monitor(qmp, server):
    hmp = lambda line: qmp.command("human-monitor-command", command_line=line)  # noqa: E731
    assert hmp("info status") == "VM status: running\r\n"
    tid = qmp.command("query-cpus-fast")[0]["thread-id"]
    assert hmp("info cpus") == "* CPU #0: thread_id=%d\r\n" % tid
    assert hmp("info pci") == ""
    assert hmp("info block") == ""
    assert "isa-debug-exit" in hmp("info qtree")
    assert "info [subcommand]" in hmp("help")
    assert "info status" in hmp("info")
    assert hmp("frobnicate") == "unknown command: 'frobnicate'\r\n"
    assert hmp("stop") == ""
    assert hmp("info status") == "VM status: paused\r\n"
    hmp("cont")
    assert [qmp.event()["event"] for _ in range(2)] == ["STOP", "RESUME"]


def test_quit_ends_the_machine(server):
    with server.client() as a, server.client() as b:
        reply = a.execute("quit")
        assert reply == {"return": {}}
        assert a.events[0]["event"] == "SHUTDOWN"
        assert a.events[0]["data"] == {"guest": False, "reason": "host-qmp-quit"}
        assert b.event("SHUTDOWN")["data"]["reason"] == "host-qmp-quit"
        assert server.wait() == 0
    log = open(os.path.join(server.dir, "vm.log")).read()
    assert "qmp: serving QMP on" in log and "event: SHUTDOWN reason=host-qmp-quit" in log


# ---- bad input -------------------------------------------------------------------------

BAD_INPUT = [
    ('foo', "GenericError", "JSON parse error, invalid keyword 'foo'"),
    ('[1]', "GenericError", "QMP input must be a JSON object"),
    ('"text"', "GenericError", "QMP input must be a JSON object"),
    ('{"execute": 3}', "GenericError", "QMP input member 'execute' must be a string"),
    ('{"arguments": {}}', "GenericError", "QMP input lacks member 'execute'"),
    ('{"execute": "query-status", "arguments": []}', "GenericError",
     "QMP input member 'arguments' must be an object"),
    ('{"execute": "query-status", "foo": 1}', "GenericError", "QMP input member 'foo' is unexpected"),
    ('{"execute": "bogus"}', "CommandNotFound", "The command bogus has not been found"),
    ('{"execute": "device_del"}', "GenericError", "Parameter 'id' is missing"),
    ('{"execute": "device_del", "arguments": {"id": 1}}', "GenericError",
     "Invalid parameter type for 'id', expected: string"),
    ('{"execute": "query-status", "arguments": {"x": 1}}', "GenericError",
     "Parameter 'x' is unexpected"),
    ('{"execute": "human-monitor-command", "arguments": {"command-line": true}}', "GenericError",
     "Invalid parameter type for 'command-line', expected: string"),
]


@pytest.mark.parametrize("text,cls,desc", BAD_INPUT)
def test_bad_input_gets_qemus_error(qmp, text, cls, desc):
    qmp.send_raw(text + "\n")
    assert error_of(qmp.reply()) == (cls, desc)
    assert qmp.command("query-status")["running"] is True  # the session goes on


def test_invalid_json_inside_an_object(qmp):
    qmp.send_raw('{"execute": query-status}\n')
    cls, desc = error_of(qmp.reply())
    assert cls == "GenericError" and desc.startswith("JSON parse error")
    qmp.send_raw('{"execute":"query-name"}{"execute":"query-kvm"}\n')  # no separator needed
    assert qmp.reply() == {"return": {}}
    assert qmp.reply()["return"]["enabled"] is True


def test_huge_message_gets_an_error_and_the_session_recovers(server):
    with server.client() as bystander, server.client() as bad:
        bad.send_raw('{"execute": "query-status", "arguments": {"x": "')
        bad.send_raw("a" * (2 << 20))
        assert error_of(bad.reply()) == ("GenericError", "JSON parse error, message too large")
        assert bystander.command("query-status")["running"] is True
        bad.send_raw('"}}\n{"execute": "query-name", "id": "after"}\n')
        assert bad.reply() == {"return": {}, "id": "after"}


def test_deep_nesting_is_refused(server):
    with server.client() as bad, server.client() as other:
        bad.send_raw("[" * 1000 + "\n")
        assert "too many nested" in error_of(bad.reply())[1]
        assert other.command("query-name") == {}
        assert bad.command("query-name") == {}


def test_disconnects_mid_message_and_mid_command(server):
    with server.client() as watcher:
        for payload in (b'{"execute": "query-st', b'{"execute": "stop"}\n'):
            s = server.raw()
            s.recv(4096)  # greeting
            s.sendall(b'{"execute": "qmp_capabilities"}\n')
            s.sendall(payload)
            s.close()
        time.sleep(0.2)
        assert watcher.event("STOP")["event"] == "STOP"
        assert watcher.command("query-status")["status"] == "paused"
        watcher.command("cont")
    with server.client() as again:
        assert again.command("query-status")["status"] == "running"


def test_several_clients_get_every_event(server):
    clients = [server.client() for _ in range(5)]
    try:
        clients[0].command("stop")
        clients[3].command("cont")
        for c in clients:
            assert [c.event()["event"] for _ in range(2)] == ["STOP", "RESUME"]
        unnegotiated = server.client(negotiate=False)
        clients[1].command("stop")
        assert error_of(unnegotiated.execute("query-status"))[0] == "CommandNotFound"
        assert unnegotiated.events == []  # events only after negotiation
        unnegotiated.close()
    finally:
        for c in clients:
            c.close()


def test_a_client_that_never_reads_does_not_block_others(server):
    lazy = server.raw()
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.sendall(b'{"execute":"qmp_capabilities"}\n' + b'{"execute":"query-commands"}\n' * 2000)
    with server.client() as c:
        for _ in range(20):
            assert c.command("query-status")["running"] is True
    lazy.close()


# ---- through socat -----------------------------------------------------------------------

@pytest.mark.skipif(not shutil.which("socat"), reason="socat is not installed")
def test_session_through_socat(server):
    script = "".join(json.dumps(c) + "\n" for c in [
        {"execute": "qmp_capabilities"},
        {"execute": "query-status", "id": 1},
        {"execute": "stop", "id": 2},
        {"execute": "human-monitor-command", "arguments": {"command-line": "info status"}, "id": 3},
        {"execute": "cont", "id": 4},
        {"execute": "nope", "id": 5},
        {"execute": "quit", "id": 6},
    ])
    p = subprocess.run(["socat", "-t", "5", "-", "UNIX-CONNECT:" + server.path], input=script,
                       capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert "QMP" in lines[0]
    replies = [m for m in lines[1:] if "event" not in m]
    assert [m.get("id") for m in replies] == [None, 1, 2, 3, 4, 5, 6]
    assert replies[3]["return"] == "VM status: paused\r\n"
    assert replies[5]["error"]["class"] == "CommandNotFound"
    events = [m["event"] for m in lines[1:] if "event" in m]
    assert events == ["STOP", "RESUME", "SHUTDOWN"]
    order = [m.get("event", m.get("id")) for m in lines[1:]]
    assert order.index("STOP") < order.index(2) and order.index("SHUTDOWN") < order.index(6)
    assert server.wait() == 0


def test_bad_qmp_address_is_one_error_line():
    from qmp_helpers import LOOP, VMM_RUN
    p = subprocess.run([VMM_RUN, "--kernel", LOOP, "--qmp", "tcp:1234", "--serial", "none"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "unix:PATH" in p.stderr


def test_query_cpus_fast_with_two_vcpus():
    with tmpdir() as d, vmm_run(d, "--cpus", "2") as srv, srv.client() as c:
        deadline = time.monotonic() + 10
        cpus = c.command("query-cpus-fast")
        while any(cpu["thread-id"] == 0 for cpu in cpus) and time.monotonic() < deadline:
            time.sleep(0.05)  # the second vCPU thread may still be starting
            cpus = c.command("query-cpus-fast")
        assert [(cpu["cpu-index"], cpu["props"]["core-id"]) for cpu in cpus] == [(0, 0), (1, 1)]
        for cpu in cpus:
            with open("/proc/%d/task/%d/comm" % (srv.proc.pid, cpu["thread-id"])) as f:
                assert f.read().strip() == "vcpu %d" % cpu["cpu-index"]
        info = c.command("human-monitor-command", command_line="info cpus")
        assert info == "* CPU #0: thread_id=%d\r\n  CPU #1: thread_id=%d\r\n" % (
            cpus[0]["thread-id"], cpus[1]["thread-id"])


def test_random_garbage_from_several_clients(server):
    """Deterministic random bytes (and random JSON-ish fragments) from three
    clients at once: each gets errors or nothing, the server stays up and a
    well-behaved client is answered throughout."""
    import random
    rng = random.Random(1234)
    pieces = ['{', '}', '[', ']', '"', '\\', ':', ',', '{"execute":', '"query-status"', 'null',
              '1e999', '\n', ' ', '"\\u0000"', '{"execute":"stop"', '\xff', 'true']
    with server.client() as good:
        noisy = [server.raw() for _ in range(3)]
        try:
            for round_ in range(30):
                for s in noisy:
                    if rng.random() < 0.5:
                        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 512)))
                    else:
                        data = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 64)))
                        data = data.encode("utf-8", "surrogateescape")
                    try:
                        s.sendall(data)
                    except OSError:
                        pass
                assert "return" in good.execute("query-name")
        finally:
            for s in noisy:
                s.close()
        assert good.command("query-status")["status"] in ("running", "paused")
