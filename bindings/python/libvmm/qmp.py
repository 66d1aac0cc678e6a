"""A small synchronous QMP client (the QEMU Machine Protocol over a Unix
socket).  Used against libvmm and against qemu-system-x86_64 alike by the
tests and bench/bench-qmp.py."""
import json
import socket
import time


class QMPError(Exception):
    """An {"error": {"class", "desc"}} reply."""

    def __init__(self, error_class, desc):
        super().__init__("%s: %s" % (error_class, desc))
        self.error_class = error_class
        self.desc = desc
        self.message = desc
        self.errno = 0


class QMPClient:
    """Connect, read the greeting (.greeting), optionally negotiate."""

    def __init__(self, path, negotiate=True, timeout=30, connect_timeout=10):
        deadline = time.monotonic() + connect_timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self._buf = b""
        self.events = []
        self.greeting = self.recv()
        if negotiate:
            self.command("qmp_capabilities")

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def send_raw(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def recv(self):
        """The next message (reply or event), as a dict; None at end of stream."""
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, name, arguments=None, id=None):
        """Send a command and return its reply dict; events seen meanwhile go
        to self.events."""
        cmd = {"execute": name}
        if arguments is not None:
            cmd["arguments"] = arguments
        if id is not None:
            cmd["id"] = id
        self.send_raw(json.dumps(cmd) + "\n")
        return self.reply()

    def reply(self):
        while True:
            msg = self.recv()
            if msg is None:
                raise ConnectionError("the QMP server closed the connection")
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def command(self, name, **arguments):
        """The command's "return" value, or QMPError."""
        reply = self.execute(name, {k.replace("_", "-"): v for k, v in arguments.items()} or None)
        if "error" in reply:
            raise QMPError(reply["error"]["class"], reply["error"]["desc"])
        return reply["return"]

    def event(self, name=None, timeout=30):
        """The next event (called `name`), from those queued or the socket."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if name is None or ev["event"] == name:
                    return self.events.pop(i)
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.recv()
            except socket.timeout:
                raise TimeoutError("no %s event within %s s" % (name or "", timeout)) from None
            if msg is None:
                raise ConnectionError("the QMP server closed the connection")
            if "event" in msg:
                self.events.append(msg)
