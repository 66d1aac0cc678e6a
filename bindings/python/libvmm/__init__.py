"""libvmm: KVM virtual machines as Python objects.

    import libvmm
    with libvmm.Machine(kernel="guest.elf", memory="256M",
                        devices=["isa-debug-exit,iobase=0xf4,iosize=4"]) as m:
        m.start()
        for event in m.events(timeout=30):
            print(event.name, event.reason)
        print(m.exit_reason, m.exit_code, m.console)

Every call goes through libvmm.so's public C API (cffi, ABI mode); failures
raise libvmm.Error (or a subclass) carrying the library's message and errno.
"""
import collections
import errno as _errno
import json
import queue
import threading

from ._ffi import ffi, lib, NOT_WRAPPED  # noqa: F401  (lib: the raw C API)
from .qmp import QMPClient, QMPError  # noqa: F401

__all__ = ["Error", "NotFoundError", "StateError", "InvalidArgumentError", "NotSupportedError",
           "TimeoutError", "QMPError", "Machine", "Block", "NbdServer", "Event", "QMPClient", "version",
           "list_types", "list_properties", "parse_size", "set_log_callback", "lib", "ffi"]


# ---- errors --------------------------------------------------------------------

class Error(Exception):
    """A failed libvmm call: .message is the library's text, .errno its errno."""

    def __init__(self, message, errno=0):
        super().__init__(message)
        self.message = message
        self.errno = errno


class NotFoundError(Error):
    """ENOENT / ENODEV: an unknown type, device, file or property."""


class StateError(Error):
    """EBUSY / ESRCH: the machine is in the wrong state for the call."""


class InvalidArgumentError(Error, ValueError):
    """EINVAL / ERANGE: a bad value."""


class NotSupportedError(Error):
    """ENOTSUP: not supported (yet)."""


class TimeoutError(Error):  # noqa: A001 - mirrors ETIMEDOUT, also a builtins.TimeoutError
    """ETIMEDOUT: the machine did not end (or no event came) in time."""


_ERRNO_CLASSES = {
    _errno.ENOENT: NotFoundError, _errno.ENODEV: NotFoundError,
    _errno.EBUSY: StateError, _errno.ESRCH: StateError,
    _errno.EINVAL: InvalidArgumentError, _errno.ERANGE: InvalidArgumentError,
    _errno.ENOTSUP: NotSupportedError, _errno.ETIMEDOUT: TimeoutError,
}


def _last_error():
    message = ffi.string(lib.vmm_get_error()).decode(errors="replace")
    err = lib.vmm_get_errno()
    return _ERRNO_CLASSES.get(err, Error)(message, err)


def _check(ret):
    if ret == ffi.NULL or (isinstance(ret, int) and ret < 0):
        raise _last_error()
    return ret


def _text(ptr):
    return None if ptr == ffi.NULL else ffi.string(ptr).decode(errors="replace")


def _value_text(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _spec(type_name, props):
    """"type,key=value,..." with commas in values doubled; kwargs use _ for -."""
    parts = [type_name]
    for key, value in props.items():
        parts.append("%s=%s" % (key.replace("_", "-"), _value_text(value).replace(",", ",,")))
    return ",".join(parts)


# ---- library-wide calls ------------------------------------------------------------

def version():
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return ffi.string(lib.vmm_version()).decode()


def list_types(kind):
    """[(name, help)] of a kind: "machine", "device", "cpu-model", "block-driver"."""
    out = []

    @ffi.callback("int(void *, const char *, const char *)")
    def collect(_data, name, help_text):
        out.append((_text(name), _text(help_text)))
        return 0
    _check(lib.vmm_list_types(kind.encode(), collect, ffi.NULL))
    return out


PropertyInfo = collections.namedtuple("PropertyInfo", "name type default help choices")


def list_properties(kind, name):
    """The properties of type `name` of `kind`, as PropertyInfo tuples."""
    out = []

    @ffi.callback("int(void *, const struct vmm_property_info *)")
    def collect(_data, info):
        choices = _text(info.choices)
        out.append(PropertyInfo(_text(info.name), _text(info.type), _text(info.default_value),
                                _text(info.help), choices.split("|") if choices else None))
        return 0
    _check(lib.vmm_list_properties(kind.encode(), name.encode(), collect, ffi.NULL))
    return out


def parse_size(text):
    """Bytes in "512M", "1.5G", "4096"."""
    out = ffi.new("uint64_t *")
    _check(lib.vmm_parse_size(text.encode(), out))
    return int(out[0])


LOG_ERROR, LOG_WARNING, LOG_INFO, LOG_DEBUG = 3, 4, 6, 7
_log_callback = None


def set_log_callback(fn, max_level=LOG_INFO):
    """Process-wide log: fn(level, domain, message) from any libvmm thread; None silences."""
    global _log_callback
    if fn is None:
        _check(lib.vmm_set_log_callback(ffi.NULL, ffi.NULL, ffi.NULL, max_level))
        _log_callback = None
        return

    @ffi.callback("void(void *, int, const char *, const char *)")
    def trampoline(_data, level, domain, message):
        fn(level, _text(domain), _text(message))
    _check(lib.vmm_set_log_callback(trampoline, ffi.NULL, ffi.NULL, max_level))
    _log_callback = trampoline  # keep alive while installed


# ---- machines ----------------------------------------------------------------------

Event = collections.namedtuple("Event", "type name seconds microseconds guest reason device message "
                               "node_name operation action nospace")
Event.__doc__ = "One machine event; name is QMP's (STOP, RESUME, SHUTDOWN, RESET, ...)."

VcpuInfo = collections.namedtuple("VcpuInfo", "index thread_id")
DeviceInfo = collections.namedtuple("DeviceInfo", "id type properties platform realized")
BlockNodeInfo = collections.namedtuple("BlockNodeInfo",
                                       "name driver filename read_only device stats",
                                       defaults=(None,))
_BLOCK_STATS = ("rd_bytes", "wr_bytes", "unmap_bytes", "rd_operations", "wr_operations",
                "flush_operations", "unmap_operations", "rd_merged", "wr_merged",
                "failed_rd_operations", "failed_wr_operations", "failed_flush_operations",
                "failed_unmap_operations")

_STATES = {0: "created", 1: "running", 2: "paused", 3: "ended"}
_EXIT_REASONS = {0: None, 1: "poweroff", 2: "reset", 3: "test", 4: "error", 5: "stopped"}


class _Resource:
    """A libvmm handle: `with` closes it, and so does garbage collection
    (subclasses define close(), which must be safe to call twice)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Device:
    """A device added to a machine (before start)."""

    def __init__(self, machine, type_name, id=None):
        self.machine = machine
        self.type = type_name
        self.id = id

    def remove(self):
        """Remove it (before start; the machine emits DEVICE_DELETED)."""
        if self.id is None:
            raise InvalidArgumentError("only devices with an id can be removed", _errno.EINVAL)
        self.machine.remove_device(self.id)

    def __repr__(self):
        return "<libvmm.Device %s id=%r>" % (self.type, self.id)


class Machine(_Resource):
    """A virtual machine.  Properties are keyword arguments (cpu_model= for
    "cpu-model"); `devices` a list of "type,key=value" strings, `chardevs`
    a list of chardev specs ("socket,id=c0,path=P,server=on,wait=off"; added
    before the devices, which name them with chardev=ID).  `on_serial`
    gets each chunk of console output (bytes); `on_event` each Event.  Use it
    as a context manager, or call close(): the machine is always freed."""

    def __init__(self, type="microvm", *, devices=(), netdevs=(), chardevs=(), on_serial=None,
                 on_event=None, **props):
        self._m = ffi.NULL
        self._console = bytearray()
        self._console_lock = threading.Lock()
        self._events = queue.Queue()
        self._event_callbacks = [on_event] if on_event else []
        self._serial_callbacks = [on_serial] if on_serial else []
        self._log_keep = None
        m = lib.vmm_machine_new(type.encode())
        _check(m)
        self._m = m
        try:
            self._serial_cb = ffi.callback("void(void *, const void *, size_t)", self._on_serial)
            self._event_cb = ffi.callback("void(void *, const struct vmm_event *)", self._on_event)
            _check(lib.vmm_machine_set_serial_callback(m, self._serial_cb, ffi.NULL, ffi.NULL))
            _check(lib.vmm_machine_set_event_callback(m, self._event_cb, ffi.NULL, ffi.NULL))
            for key, value in props.items():
                self.set(key, value)
            for spec in netdevs:
                self.add_netdev(spec)
            for spec in chardevs:
                self.add_chardev(spec)
            for spec in devices:
                self.add_device(spec)
        except BaseException:
            self.close()
            raise

    # -- life time
    def close(self):
        """Free the machine (stopping it first).  Safe to call twice."""
        m, self._m = self._m, ffi.NULL
        if m != ffi.NULL:
            lib.vmm_machine_free(m)

    @property
    def handle(self):
        """The vmm_machine * (cffi pointer) for calls through libvmm.lib."""
        if self._m == ffi.NULL:
            raise StateError("the machine was closed", _errno.EBADF)
        return self._m

    # -- callbacks (run on libvmm threads)
    def _on_serial(self, _data, buf, length):
        chunk = bytes(ffi.buffer(buf, length))
        with self._console_lock:
            self._console += chunk
        for fn in list(self._serial_callbacks):
            fn(chunk)

    def _on_event(self, _data, ev):
        event = Event(int(ev.type), _text(ev.name), int(ev.seconds), int(ev.microseconds),
                      bool(ev.guest), _text(ev.reason), _text(ev.device), _text(ev.message),
                      _text(ev.node_name), _text(ev.operation), _text(ev.action), bool(ev.nospace))
        self._events.put(event)
        for fn in list(self._event_callbacks):
            fn(event)

    def on_event(self, fn):
        """Call fn(event) for every later event (from libvmm threads)."""
        self._event_callbacks.append(fn)
        return fn

    def on_serial(self, fn):
        """Call fn(bytes) for every later chunk of console output."""
        self._serial_callbacks.append(fn)
        return fn

    def events(self, timeout=None):
        """Iterate over events as they come, ending after SHUTDOWN.  Raises
        libvmm.TimeoutError when none arrives within `timeout` seconds."""
        while True:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError("no event within %s s" % timeout, _errno.ETIMEDOUT) from None
            yield event
            if event.name == "SHUTDOWN":
                return

    def wait_event(self, name, timeout=30):
        """The next event called `name` (earlier other events are skipped)."""
        for event in self.events(timeout=timeout):
            if event.name == name:
                return event
        raise StateError("the machine ended before %s" % name, _errno.ESRCH)

    # -- configuration
    def set(self, key, value):
        _check(lib.vmm_machine_set(self.handle, key.replace("_", "-").encode(),
                                   _value_text(value).encode()))

    def get(self, key):
        ptr = lib.vmm_machine_get(self.handle, key.replace("_", "-").encode())
        _check(ptr)
        try:
            return ffi.string(ptr).decode()
        finally:
            lib.free(ptr)

    def add_device(self, spec, **props):
        """Add a device: add_device("isa-debug-exit", iobase=0xf4) or a full spec string."""
        full = _spec(spec, props) if props else spec
        _check(lib.vmm_machine_add_device(self.handle, full.encode()))
        fields = dict(p.split("=", 1) for p in full.split(",")[1:] if "=" in p)
        return Device(self, full.split(",")[0], fields.get("id"))

    def add_netdev(self, spec, **props):
        """Add a network backend before the NICs that use it:
        add_netdev("tap,id=n0,ifname=tap0") or add_netdev("tap", id="n0", fd=5).
        Keys keep their underscores (vnet_hdr)."""
        if props:
            spec = ",".join([spec] + ["%s=%s" % (k, _value_text(v).replace(",", ",,"))
                                      for k, v in props.items()])
        _check(lib.vmm_machine_add_netdev(self.handle, spec.encode()))

    def set_link(self, name, up):
        """Link of a netdev or NIC (netdev id or device id) up or down, as QMP set_link."""
        _check(lib.vmm_machine_set_link(self.handle, name.encode(), 1 if up else 0))

    def add_chardev(self, spec, **props):
        """Add a host end for devices: add_chardev("socket", id="c0", path=P, server=True,
        wait=False) or a full spec string ("socket,id=c0,path=P,server=on,wait=off")."""
        full = _spec(spec, props) if props else spec
        _check(lib.vmm_machine_add_chardev(self.handle, full.encode()))

    def remove_device(self, id):
        _check(lib.vmm_machine_remove_device(self.handle, id.encode()))

    def devices(self):
        out = []

        @ffi.callback("int(void *, const struct vmm_device_info *)")
        def collect(_data, info):
            out.append(DeviceInfo(_text(info.id), _text(info.type), _text(info.properties),
                                  bool(info.platform), bool(info.realized)))
            return 0
        _check(lib.vmm_machine_list_devices(self.handle, collect, ffi.NULL))
        return out

    def add_drive(self, spec, **props):
        """Open an image as a drive for devices' drive=ID:
        add_drive("file=disk.qcow2,format=qcow2,id=hd0,cache=none")."""
        full = _spec(spec, props) if props else spec
        _check(lib.vmm_machine_add_drive(self.handle, full.encode()))

    def add_block(self, id, image, read_only=False):
        """Make an open libvmm.Block a drive named `id`; the machine takes it
        over (the Block object is emptied: closing it does nothing)."""
        _check(lib.vmm_machine_add_block(self.handle, id.encode(), image.handle, int(read_only)))
        image._blk = ffi.NULL

    def remove_drive(self, id):
        """Remove and close a drive or block node (EBUSY while a device uses it)."""
        _check(lib.vmm_machine_remove_drive(self.handle, id.encode()))

    def block_nodes(self):
        """The machine's block nodes (drives and QMP blockdev-add nodes), as BlockNodeInfo."""
        out = []

        @ffi.callback("int(void *, const struct vmm_block_node_info *)")
        def collect(_data, info):
            stats = ({k: int(getattr(info.stats, k)) for k in _BLOCK_STATS}
                     if info.stats != ffi.NULL else None)
            out.append(BlockNodeInfo(_text(info.name), _text(info.driver), _text(info.filename),
                                     bool(info.read_only), _text(info.device), stats))
            return 0
        _check(lib.vmm_machine_list_block_nodes(self.handle, collect, ffi.NULL))
        return out

    # -- running
    def start(self):
        _check(lib.vmm_machine_start(self.handle))

    def pause(self):
        _check(lib.vmm_machine_pause(self.handle))

    def resume(self):
        _check(lib.vmm_machine_resume(self.handle))

    def reset(self):
        _check(lib.vmm_machine_reset(self.handle))

    def request_poweroff(self):
        _check(lib.vmm_machine_request_poweroff(self.handle))

    def stop(self):
        _check(lib.vmm_machine_stop(self.handle))

    def wait(self, timeout=None):
        """Wait until the machine ends; raises libvmm.TimeoutError after `timeout` s."""
        ms = -1 if timeout is None else int(timeout * 1000)
        _check(lib.vmm_machine_wait(self.handle, ms))

    def serial_input(self, data):
        if isinstance(data, str):
            data = data.encode()
        _check(lib.vmm_machine_serial_input(self.handle, data, len(data)))

    # -- state
    @property
    def state(self):
        return _STATES.get(int(lib.vmm_machine_get_state(self.handle)), "unknown")

    @staticmethod
    def state_name(state):
        return ffi.string(lib.vmm_machine_state_name(state)).decode()

    @property
    def exit_reason(self):
        """None, "poweroff", "reset", "test", "error" or "stopped"."""
        return _EXIT_REASONS.get(int(lib.vmm_machine_exit_reason(self.handle)))

    @property
    def exit_code(self):
        return int(lib.vmm_machine_exit_code(self.handle))

    @property
    def exit_message(self):
        return _text(lib.vmm_machine_exit_message(self.handle))

    @property
    def status(self):
        """dict: state, running, status (QMP's RunState), exit_reason, exit_code,
        exit_message, name, type."""
        st = ffi.new("struct vmm_status *")
        st.size = ffi.sizeof("struct vmm_status")
        _check(lib.vmm_machine_query_status(self.handle, st))
        return {"state": _STATES.get(int(st.state)), "running": bool(st.running),
                "status": _text(st.status), "exit_reason": _EXIT_REASONS.get(int(st.exit_reason)),
                "exit_code": int(st.exit_code), "exit_message": _text(st.exit_message),
                "name": _text(st.name), "type": _text(st.type)}

    @property
    def memory(self):
        """dict: ram_size, ram_below_4g, ram_above_4g (bytes)."""
        info = ffi.new("struct vmm_memory_info *")
        info.size = ffi.sizeof("struct vmm_memory_info")
        _check(lib.vmm_machine_query_memory(self.handle, info))
        return {"ram_size": int(info.ram_size), "ram_below_4g": int(info.ram_below_4g),
                "ram_above_4g": int(info.ram_above_4g)}

    def vcpus(self):
        out = []

        @ffi.callback("int(void *, const struct vmm_vcpu_info *)")
        def collect(_data, info):
            out.append(VcpuInfo(int(info.index), int(info.thread_id)))
            return 0
        _check(lib.vmm_machine_list_vcpus(self.handle, collect, ffi.NULL))
        return out

    @property
    def console(self):
        """Everything the guest wrote to its serial port so far, as text."""
        with self._console_lock:
            return self._console.decode(errors="replace")

    # -- logs
    def set_log_file(self, path, max_level=LOG_INFO):
        _check(lib.vmm_machine_set_log_file(self.handle, path.encode() if path else ffi.NULL,
                                            max_level))

    def set_log_callback(self, fn, max_level=LOG_INFO):
        """This machine's log: fn(level, domain, message); None removes it."""
        if fn is None:
            _check(lib.vmm_machine_set_log_callback(self.handle, ffi.NULL, ffi.NULL, ffi.NULL,
                                                    max_level))
            self._log_keep = None
            return

        @ffi.callback("void(void *, int, const char *, const char *)")
        def trampoline(_data, level, domain, message):
            fn(level, _text(domain), _text(message))
        _check(lib.vmm_machine_set_log_callback(self.handle, trampoline, ffi.NULL, ffi.NULL,
                                                max_level))
        self._log_keep = trampoline

    # -- control protocol
    def serve_qmp(self, address):
        """Serve QMP on "unix:PATH" (or a path) until the machine is freed."""
        _check(lib.vmm_control_serve(self.handle, address.encode()))

    def qmp_raw(self, command):
        """Run a QMP command object (dict) and return the reply dict."""
        ptr = lib.vmm_control_execute(self.handle, json.dumps(command).encode())
        _check(ptr)
        try:
            return json.loads(ffi.string(ptr).decode())
        finally:
            lib.free(ptr)

    def qmp(self, execute, **arguments):
        """Run a QMP command; returns its "return" value or raises QMPError.
        Argument names use _ for - (node_name=...)."""
        cmd = {"execute": execute}
        if arguments:
            cmd["arguments"] = {k.replace("_", "-"): v for k, v in arguments.items()}
        reply = self.qmp_raw(cmd)
        if "error" in reply:
            raise QMPError(reply["error"]["class"], reply["error"]["desc"])
        return reply["return"]

    def __repr__(self):
        if self._m == ffi.NULL:
            return "<libvmm.Machine (closed)>"
        return "<libvmm.Machine %s>" % self.state


# ---- block images --------------------------------------------------------------------

RDWR, NO_BACKING, FORCE_SHARE, NOCACHE, NATIVE_AIO, IMAGE_OPTS = (1 << i for i in range(6))
REQ_FUA, REQ_MAY_UNMAP = 1, 2
FIX_LEAKS, FIX_ERRORS = 1, 2

Snapshot = collections.namedtuple("Snapshot", "id name vm_state_size date_sec date_nsec "
                                              "vm_clock_nsec icount")
Extent = collections.namedtuple("Extent", "start length flags depth offset filename")


class Block(_Resource):
    """An open disk image (raw, qcow2) and its backing chain."""

    def __init__(self, filename_or_options, format=None, *, writable=False, flags=0,
                 _borrowed=None):
        self._owner = _borrowed
        if _borrowed is not None:
            self._blk = filename_or_options
            return
        flags |= RDWR if writable else 0
        blk = lib.vmm_block_open(filename_or_options.encode(),
                                 format.encode() if format else ffi.NULL, flags)
        _check(blk)
        self._blk = blk

    @staticmethod
    def create(filename, format="qcow2", size=-1, options=None, **opts):
        """Create an image; `opts` are qemu-img -o options (cluster_size="64k")."""
        text = options or ",".join("%s=%s" % (k, _value_text(v)) for k, v in opts.items())
        _check(lib.vmm_block_create(filename.encode(), format.encode(), size,
                                    text.encode() if text else ffi.NULL))

    @staticmethod
    def create_options(format):
        """The -o options `create` accepts for `format`, as PropertyInfo tuples."""
        out = []

        @ffi.callback("int(void *, const struct vmm_property_info *)")
        def collect(_data, info):
            choices = _text(info.choices)
            out.append(PropertyInfo(_text(info.name), _text(info.type), _text(info.default_value),
                                    _text(info.help), choices.split("|") if choices else None))
            return 0
        _check(lib.vmm_block_list_create_options(format.encode(), collect, ffi.NULL))
        return out

    @staticmethod
    def measure(format, size=0, src=None, options=None):
        required = ffi.new("uint64_t *")
        full = ffi.new("uint64_t *")
        _check(lib.vmm_block_measure(format.encode(), options.encode() if options else ffi.NULL,
                                     src._blk if src else ffi.NULL, size, required, full))
        return int(required[0]), int(full[0])

    def close(self):
        blk, self._blk = getattr(self, "_blk", ffi.NULL), ffi.NULL
        if blk != ffi.NULL and self._owner is None:
            _check(lib.vmm_block_close(blk))

    @property
    def handle(self):
        if self._blk == ffi.NULL:
            raise StateError("the image was closed", _errno.EBADF)
        return self._blk

    @property
    def size(self):
        return int(_check(lib.vmm_block_size(self.handle)))

    @property
    def format(self):
        return _text(lib.vmm_block_format(self.handle))

    @property
    def cluster_size(self):
        return int(_check(lib.vmm_block_cluster_size(self.handle)))

    @property
    def allocated_size(self):
        return int(_check(lib.vmm_block_allocated_size(self.handle)))

    @property
    def backing(self):
        """The backing image (borrowed: lives as long as this one), or None."""
        b = lib.vmm_block_backing(self.handle)
        if b == ffi.NULL:
            if lib.vmm_get_errno():
                raise _last_error()
            return None
        return Block(b, _borrowed=self)

    def read(self, offset, length):
        buf = ffi.new("char[]", length)
        _check(lib.vmm_block_read(self.handle, offset, buf, length))
        return bytes(ffi.buffer(buf, length))

    def write(self, offset, data, fua=False):
        _check(lib.vmm_block_write(self.handle, offset, data, len(data), REQ_FUA if fua else 0))

    def flush(self):
        _check(lib.vmm_block_flush(self.handle))

    def discard(self, offset, length):
        _check(lib.vmm_block_discard(self.handle, offset, length))

    def cache(self, offset, length):
        """Prefetch a range (NBD_CMD_CACHE on an NBD export; a hint)."""
        _check(lib.vmm_block_cache(self.handle, offset, length))

    def write_zeroes(self, offset, length, may_unmap=False):
        _check(lib.vmm_block_write_zeroes(self.handle, offset, length,
                                          REQ_MAY_UNMAP if may_unmap else 0))

    def block_status(self, offset, length):
        ext = ffi.new("struct vmm_block_extent *")
        ext.size = ffi.sizeof("struct vmm_block_extent")
        _check(lib.vmm_block_block_status(self.handle, offset, length, ext))
        return Extent(int(ext.start), int(ext.length), int(ext.flags), int(ext.depth),
                      int(ext.offset), _text(ext.filename))

    def set_workers(self, count):
        _check(lib.vmm_block_set_workers(self.handle, count))

    def info(self):
        """qemu-img info's keys ("virtual-size", "format", ...) as a flat dict."""
        out = {}

        @ffi.callback("int(void *, const char *, enum vmm_block_info_type, const char *, int64_t)")
        def collect(_data, key, kind, text, num):
            out[_text(key)] = (_text(text) if kind == lib.VMM_BLOCK_INFO_STR
                               else bool(num) if kind == lib.VMM_BLOCK_INFO_BOOL else int(num))
            return 0
        _check(lib.vmm_block_info(self.handle, collect, ffi.NULL))
        return out

    def check(self, fix=0):
        res = ffi.new("struct vmm_block_check_result *")
        res.size = ffi.sizeof("struct vmm_block_check_result")
        _check(lib.vmm_block_check(self.handle, fix, res))
        fields = ("corruptions", "leaks", "check_errors", "corruptions_fixed", "leaks_fixed",
                  "allocated_clusters", "total_clusters", "fragmented_clusters",
                  "compressed_clusters", "image_end_offset")
        out = {f: int(getattr(res, f)) for f in fields}
        out["messages"] = _text(res.messages)
        return out

    def snapshots(self):
        out = []

        @ffi.callback("int(void *, const struct vmm_block_snapshot *)")
        def collect(_data, sn):
            out.append(Snapshot(_text(sn.id), _text(sn.name), int(sn.vm_state_size),
                                int(sn.date_sec), int(sn.date_nsec), int(sn.vm_clock_nsec),
                                int(sn.icount)))
            return 0
        _check(lib.vmm_block_snapshot_list(self.handle, collect, ffi.NULL))
        return out

    def snapshot_create(self, name):
        _check(lib.vmm_block_snapshot_create(self.handle, name.encode()))

    def snapshot_apply(self, id_or_name):
        _check(lib.vmm_block_snapshot_apply(self.handle, id_or_name.encode()))

    def snapshot_delete(self, id_or_name):
        _check(lib.vmm_block_snapshot_delete(self.handle, id_or_name.encode()))

    def resize(self, size, shrink=False, prealloc=None):
        _check(lib.vmm_block_resize(self.handle, size, 1 if shrink else 0,
                                    prealloc.encode() if prealloc else ffi.NULL))

    def amend(self, options):
        _check(lib.vmm_block_amend(self.handle, options.encode()))

    def _progress(self, fn):
        if fn is None:
            return ffi.NULL

        @ffi.callback("int(void *, uint64_t, uint64_t)")
        def progress(_data, done, total):
            return 1 if fn(int(done), int(total)) else 0
        return progress

    def commit(self, drop=False, progress=None):
        cb = self._progress(progress)
        _check(lib.vmm_block_commit(self.handle, 1 if drop else 0, cb, ffi.NULL))

    def rebase(self, backing, backing_format=None, unsafe=False, progress=None):
        cb = self._progress(progress)
        _check(lib.vmm_block_rebase(self.handle, backing.encode() if backing else ffi.NULL,
                                    backing_format.encode() if backing_format else ffi.NULL,
                                    1 if unsafe else 0, cb, ffi.NULL))


class NbdServer(_Resource):
    """An NBD server exporting Block images (qemu-nbd's role), on its own
    threads: add exports, listen, start; stop or close when done.  Exported
    Blocks must stay open while the server runs."""

    ONESHOT = 1
    WRITABLE = 1
    DISCARD = 2
    DETECT_ZEROES = 4

    def __init__(self, *, oneshot=False, max_clients=1):
        srv = lib.vmm_nbd_server_new(self.ONESHOT if oneshot else 0)
        _check(srv)
        self._srv = srv
        self._exports = []  # keep the Blocks alive while they are served
        _check(lib.vmm_nbd_server_set_max_clients(srv, max_clients))

    def add_export(self, block, name="", description=None, *, writable=False, discard=False,
                   detect_zeroes=False):
        flags = ((self.WRITABLE if writable else 0) | (self.DISCARD if discard else 0) |
                 (self.DETECT_ZEROES if detect_zeroes else 0))
        _check(lib.vmm_nbd_server_add_export(self._srv, block.handle, name.encode(),
                                             description.encode() if description else ffi.NULL,
                                             flags))
        self._exports.append(block)

    def listen_unix(self, path):
        _check(lib.vmm_nbd_server_listen_unix(self._srv, path.encode()))

    def listen_tcp(self, host="127.0.0.1", port="10809"):
        _check(lib.vmm_nbd_server_listen_tcp(self._srv, host.encode(), str(port).encode()))

    def start(self):
        _check(lib.vmm_nbd_server_start(self._srv))

    def wait(self):
        _check(lib.vmm_nbd_server_wait(self._srv))

    def stop(self):
        _check(lib.vmm_nbd_server_stop(self._srv))

    def close(self):
        srv, self._srv = getattr(self, "_srv", ffi.NULL), ffi.NULL
        if srv != ffi.NULL:
            lib.vmm_nbd_server_free(srv)
        self._exports = []

