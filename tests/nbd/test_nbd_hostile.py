"""Hostile peers: scripted servers that break the protocol (the client
reports a clear error, never crashes) and scripted clients that break it
(the server drops or answers them; other clients and the export go on)."""
import os
import socket
import struct
import threading

import pytest

from nbd_helpers import qemu_img, random_file, run, vmm, vmm_serve

NBDMAGIC, IHAVEOPT, REPLY_MAGIC = 0x4e42444d41474943, 0x49484156454F5054, 0x3e889045565a9
SIZE = 1 << 20


def recv_exact(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b


def opt_reply(c, opt, typ, data=b""):
    c.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, typ, len(data)) + data)


def handshake(c, opt_hook=None):
    """Fixed newstyle with structured replies and base:allocation (id 1)."""
    c.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
    recv_exact(c, 4)
    while True:
        _, opt, ln = struct.unpack(">QII", recv_exact(c, 16))
        data = recv_exact(c, ln)
        if opt_hook and opt_hook(c, opt, data):
            continue
        if opt == 8:
            opt_reply(c, opt, 1)
        elif opt == 10:
            opt_reply(c, opt, 4, struct.pack(">I", 1) + b"base:allocation")
            opt_reply(c, opt, 1)
        elif opt == 7:
            opt_reply(c, opt, 3, struct.pack(">HQH", 0, SIZE, 1 | 4))
            opt_reply(c, opt, 1)
            return
        else:
            opt_reply(c, opt, 0x80000001)


def chunk(flags, typ, cookie, payload):
    return struct.pack(">IHHQI", 0x668e33ef, flags, typ, cookie, len(payload)) + payload


def serve_script(path, script):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(4)

    def loop():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            try:
                script(c)
            except (EOFError, OSError):
                pass
            finally:
                c.close()
    threading.Thread(target=loop, daemon=True).start()
    return s


def read_request(c):
    magic, flags, typ, cookie, off, ln = struct.unpack(">IHHQQI", recv_exact(c, 28))
    return typ, cookie, off, ln


def transmission(reply):
    """After the handshake, answer each request with reply(c, typ, cookie, off, ln)."""
    def script(c):
        handshake(c)
        while True:
            typ, cookie, off, ln = read_request(c)
            if typ == 2:
                return
            reply(c, typ, cookie, off, ln)
    return script


def good_status(c, typ, cookie, off, ln):
    if typ == 7:
        c.sendall(chunk(1, 5, cookie, struct.pack(">III", 1, ln, 0)))
        return True
    return False


SCENARIOS = {
    "oldstyle": (lambda c: c.sendall(struct.pack(">QQQI", NBDMAGIC, 0x00420281861253, SIZE, 1) + bytes(124)),
                 "oldstyle"),
    "not-nbd": (lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n" + bytes(64)), "not an NBD server"),
    "huge-option-reply": (lambda c: handshake(c, lambda c, o, d: o == 8 and (
        c.sendall(struct.pack(">QIII", REPLY_MAGIC, 8, 1, 0x7fffffff)) or True)), "oversized option reply"),
    "bad-block-size": (lambda c: handshake(c, lambda c, o, d: o == 7 and (
        opt_reply(c, 7, 3, struct.pack(">HQH", 0, SIZE, 1)),
        opt_reply(c, 7, 3, struct.pack(">HIII", 3, 3, 4096, 1 << 20)), opt_reply(c, 7, 1)) and False),
        "invalid block size"),
    "bad-reply-magic": (transmission(lambda c, t, k, o, l: good_status(c, t, k, o, l) or
                                     c.sendall(struct.pack(">IIQ", 0xdeadbeef, 0, k))), "bad reply magic"),
    "unknown-cookie": (transmission(lambda c, t, k, o, l: good_status(c, t, k, o, l) or
                                    c.sendall(struct.pack(">IIQ", 0x67446698, 0, k + 99))), "unknown request"),
    "data-out-of-range": (transmission(lambda c, t, k, o, l: good_status(c, t, k, o, l) or
                                       c.sendall(chunk(1, 1, k, struct.pack(">Q", o + l) + b"x" * 16))),
                          "outside the read request"),
    "huge-data-chunk": (transmission(lambda c, t, k, o, l: good_status(c, t, k, o, l) or
                                     c.sendall(chunk(1, 1, k, struct.pack(">Q", o))[:16] +
                                               struct.pack(">I", 0xfffffff0) + struct.pack(">Q", o))),
                        "outside the read request"),
    "short-read-reply": (transmission(lambda c, t, k, o, l: good_status(c, t, k, o, l) or
                                      c.sendall(chunk(1, 1, k, struct.pack(">Q", o) + b"x"))),
                         "covered 1 of"),
    "error-msg-too-long": (transmission(lambda c, t, k, o, l: good_status(c, t, k, o, l) or
                                        c.sendall(chunk(1, 0x8001, k, struct.pack(">IH", 5, 60000) + b"e"))),
                           "error chunk"),
    "zero-length-extent": (transmission(lambda c, t, k, o, l: c.sendall(
        chunk(1, 5, k, struct.pack(">III", 1, 0, 0))) if t == 7 else None), "extent of length 0"),
    "hangup-mid-reply": (transmission(lambda c, t, k, o, l: good_status(c, t, k, o, l) or
                                      (c.sendall(chunk(1, 1, k, struct.pack(">Q", o) + b"x" * (l // 2))[:100]),
                                       c.close())), "closed the connection"),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_hostile_server(tmp_path, name):
    script, expect = SCENARIOS[name]
    sock = tmp_path / "evil.sock"
    s = serve_script(sock, script)
    try:
        p = vmm("convert", "-f", "raw", "-O", "raw", "nbd+unix:///?socket=%s" % sock, tmp_path / "o.raw",
                check=False, timeout=60)
    finally:
        s.close()
    assert p.returncode == 1, (p.returncode, p.stderr)   # an error, not a crash (signals are negative)
    assert expect in p.stderr, p.stderr
    assert all(line.startswith("vmm-img: ") for line in p.stderr.splitlines())


# ---- hostile clients against vmm-img serve ---------------------------------

def client_handshake(path, export=b""):
    c = socket.socket(socket.AF_UNIX)
    c.connect(str(path))
    c.settimeout(10)
    recv_exact(c, 18)
    c.sendall(struct.pack(">I", 3))
    c.sendall(struct.pack(">QII", IHAVEOPT, 8, 0))
    recv_exact(c, 20)
    data = struct.pack(">I", len(export)) + export + struct.pack(">H", 0)
    c.sendall(struct.pack(">QII", IHAVEOPT, 7, len(data)) + data)
    while True:
        _, _, typ, ln = struct.unpack(">QIII", recv_exact(c, 20))
        recv_exact(c, ln)
        if typ == 1:
            return c


def request(c, typ, off, ln, flags=0, cookie=1, payload=b""):
    c.sendall(struct.pack(">IHHQQI", 0x25609513, flags, typ, cookie, off, ln) + payload)


def read_reply(c):
    magic = struct.unpack(">I", recv_exact(c, 4))[0]
    if magic == 0x67446698:
        err, cookie = struct.unpack(">IQ", recv_exact(c, 12))
        return err, b""
    flags, typ, cookie, ln = struct.unpack(">HHQI", recv_exact(c, 16))
    payload = recv_exact(c, ln)
    return (struct.unpack(">I", payload[:4])[0] if typ & 0x8000 else 0), payload


def dropped(c):
    try:
        return c.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return True


@pytest.fixture
def served(tmp_path):
    img = tmp_path / "d.raw"
    random_file(img, 4 << 20, seed=6)
    ref = tmp_path / "ref.raw"
    with open(img, "rb") as f, open(ref, "wb") as g:
        g.write(f.read())
    with vmm_serve(tmp_path / "v.sock", img, "-f", "raw", "-e", "0") as srv:
        yield srv, img, ref


def test_hostile_clients(served):
    srv, img, ref = served
    bystander = client_handshake(srv.sock)      # a well-behaved client all along
    # garbage instead of the handshake
    c = socket.socket(socket.AF_UNIX)
    c.connect(srv.sock)
    c.settimeout(10)
    recv_exact(c, 18)
    c.sendall(b"\xff" * 64)
    assert dropped(c)
    # an option of 2 GiB
    c = socket.socket(socket.AF_UNIX)
    c.connect(srv.sock)
    c.settimeout(10)
    recv_exact(c, 18)
    c.sendall(struct.pack(">IQII", 3, IHAVEOPT, 6, 0x80000000))
    assert dropped(c)
    # bad request magic
    c = client_handshake(srv.sock)
    c.sendall(b"\x12\x34\x56\x78" + bytes(24))
    assert dropped(c)
    # oversized write
    c = client_handshake(srv.sock)
    request(c, 1, 0, 0xffffffff)
    assert dropped(c)
    # out of range read / write: errors, connection stays
    c = client_handshake(srv.sock)
    request(c, 0, 4 << 20, 4096)
    assert read_reply(c)[0] == 22                         # EINVAL
    request(c, 1, (4 << 20) - 10, 20, payload=b"z" * 20)
    assert read_reply(c)[0] == 28                         # ENOSPC
    request(c, 0, 0, 64 << 20)
    assert read_reply(c)[0] in (22, 75)                   # too big
    request(c, 9, 0, 0)
    assert read_reply(c)[0] == 22                         # unknown command
    request(c, 0, 0, 512, flags=0x80)
    assert read_reply(c)[0] == 22                         # unknown flag
    request(c, 7, 0, 4096)
    assert read_reply(c)[0] == 22                         # no meta context
    request(c, 0, 0, 16)
    assert read_reply(c)[0] == 0
    # abrupt disconnect in the middle of a write payload
    c2 = client_handshake(srv.sock)
    request(c2, 1, 0, 65536, payload=b"q" * 1000)
    c2.close()
    c.close()
    # the bystander and new clients still work, and the export is intact
    request(bystander, 0, 0, 4096)
    assert read_reply(bystander)[0] == 0
    bystander.close()
    qemu_img("compare", "-f", "raw", "-F", "raw", srv.uri(), ref)
    assert srv.proc.poll() is None
