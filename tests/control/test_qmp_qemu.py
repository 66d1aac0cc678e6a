"""The same QMP commands against libvmm (vmm-run --qmp) and QEMU 7.2
(qemu-system-x86_64 -machine microvm -qmp), booting the same guest: the
replies must have the same shape (keys and JSON types; values may differ)
for everything both implement, errors included."""
import shutil

import pytest

from qmp_helpers import needs_kvm, qemu, tmpdir, vmm_run

pytestmark = [needs_kvm, pytest.mark.skipif(not shutil.which("qemu-system-x86_64"),
                                            reason="qemu-system-x86_64 is not installed")]

# (command, arguments); each is sent to both, in this order.
COMMANDS = [
    ("query-status", None),
    ("query-version", None),
    ("query-name", None),
    ("query-kvm", None),
    ("query-cpus-fast", None),
    ("query-block", None),
    ("query-pci", None),
    ("query-commands", None),
    ("qom-list-types", {"implements": "device"}),
    ("device-list-properties", {"typename": "isa-debug-exit"}),
    ("stop", None),
    ("query-status", None),
    ("human-monitor-command", {"command-line": "info status"}),
    ("human-monitor-command", {"command-line": "info cpus"}),
    ("human-monitor-command", {"command-line": "info pci"}),
    ("cont", None),
    ("system_reset", None),
    ("system_powerdown", None),
    # errors: the class must match too
    ("no-such-command", None),
    ("query-status", {"unexpected": 1}),
    ("device_del", None),
    ("device_del", {"id": 5}),
    ("device_del", {"id": "nope"}),
    ("device-list-properties", {"typename": "nope"}),
    ("device_add", {"driver": "nope"}),
    ("blockdev-del", {"node-name": "nope"}),
]

RAW = ['foo', '[1]', '{"execute": 3}', '{"arguments": {}}', '{"execute": "query-status", "x": 1}',
       '{"execute": "query-status", "arguments": []}']


# Members QEMU's QAPI schema marks optional (ObjectPropertyInfo's
# 'description' and 'default-value'): QEMU leaves them out for some types.
SCHEMA_OPTIONAL = {"description", "default-value"}


def shape(value):
    """Keys and types, recursively; a list's shape is the set of its items'."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        shapes = []
        for item in value:
            s = shape(item)
            if s not in shapes:
                shapes.append(s)
        return ["list", shapes]
    return type(value).__name__


def check_same_shape(ours, theirs, what):
    """Objects: the same keys; lists: every item of ours shaped like some item
    of theirs (an empty list on either side matches)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), (what, ours, theirs)
        assert set(ours) == set(theirs), (what, sorted(ours), sorted(theirs))
        for k in theirs:
            check_same_shape(ours[k], theirs[k], "%s.%s" % (what, k))
    elif isinstance(theirs, list):
        assert isinstance(ours, list), (what, ours)
        if not ours or not theirs:
            return
        for item in ours:
            errors = []
            for candidate in theirs:
                try:
                    check_same_shape(item, candidate, what + "[]")
                    break
                except AssertionError as e:
                    errors.append(e)
            else:
                # object lists whose optional members differ (device-list-properties:
                # description / default-value): ours must use only keys QEMU uses
                if isinstance(item, dict) and all(isinstance(c, dict) for c in theirs):
                    keys = set().union(*theirs) | SCHEMA_OPTIONAL
                    assert set(item) <= keys, (what, sorted(item), sorted(keys))
                    continue
                raise errors[0]
    else:
        assert type(ours) is type(theirs), (what, ours, theirs)


def session(server):
    out = {"replies": [], "events": []}
    with server.client(negotiate=False) as c:
        out["greeting"] = c.greeting
        out["before"] = c.execute("query-status")
        out["caps"] = c.execute("qmp_capabilities")
        out["caps-again"] = c.execute("qmp_capabilities")
        for name, args in COMMANDS:
            out["replies"].append(c.execute(name, args, id="x"))
        for text in RAW:
            c.send_raw(text + "\n")
            out["replies"].append(c.reply())
        for name in ("STOP", "RESUME", "RESET", "POWERDOWN"):
            out["events"].append(c.event(name, timeout=30))
        quit_reply = c.execute("quit")
        out["quit"] = quit_reply
        out["events"].append(c.event("SHUTDOWN", timeout=30))
    server.wait(timeout=60)
    return out


@pytest.fixture(scope="module")
def sessions():
    with tmpdir() as d:
        with vmm_run(d) as ours:
            mine = session(ours)
        with qemu(d) as theirs:
            reference = session(theirs)
    return mine, reference


def test_greeting_shape(sessions):
    ours, theirs = sessions
    check_same_shape(ours["greeting"], theirs["greeting"], "greeting")


def test_negotiation_shape(sessions):
    ours, theirs = sessions
    for key in ("before", "caps", "caps-again", "quit"):
        check_same_shape(ours[key], theirs[key], key)
        if "error" in theirs[key]:
            assert ours[key]["error"]["class"] == theirs[key]["error"]["class"]


@pytest.mark.parametrize("index", range(len(COMMANDS) + len(RAW)))
def test_reply_shape(sessions, index):
    ours, theirs = sessions
    what = COMMANDS[index][0] if index < len(COMMANDS) else RAW[index - len(COMMANDS)]
    mine, ref = ours["replies"][index], theirs["replies"][index]
    check_same_shape(mine, ref, what)
    if "error" in ref:
        assert mine["error"]["class"] == ref["error"]["class"], (what, mine, ref)


def test_event_shapes(sessions):
    ours, theirs = sessions
    for mine, ref in zip(ours["events"], theirs["events"]):
        assert mine["event"] == ref["event"]
        check_same_shape(mine, ref, mine["event"])
        if "data" in ref:
            assert mine["data"] == ref["data"], mine["event"]


def test_shape_checker_can_fail():
    with pytest.raises(AssertionError):
        check_same_shape({"a": 1}, {"a": "x"}, "t")
    with pytest.raises(AssertionError):
        check_same_shape({"a": 1}, {"a": 1, "b": 2}, "t")
    with pytest.raises(AssertionError):
        check_same_shape([{"a": 1}], [{"b": 1}], "t")
