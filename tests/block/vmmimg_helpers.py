"""Shared helpers for the block pytest files (test_raw*.py, test_vmmimg*.py):
running vmm-img / qemu-img / qemu-io and loading libvmm through ctypes."""
import ctypes
import json
import os
import subprocess

BUILD = os.environ.get("VMM_BUILD_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build")
VMM_IMG = os.path.join(BUILD, "tools", "vmm-img", "vmm-img")
LIBVMM = os.path.join(BUILD, "lib", "libvmm.so.0")


def run(*args, check=True, input=None):
    """Run a command; return CompletedProcess with text stdout/stderr."""
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (args, p.returncode, p.stdout, p.stderr))
    return p


def vmm(*args, check=True):
    return run(VMM_IMG, *args, check=check)


def qemu_img(*args, check=True):
    return run("qemu-img", *args, check=check)


def qemu_io(fmt, path, *cmds):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    return run(*args, path)


def info_json(tool, path, *extra):
    return json.loads(tool("info", "--output=json", *extra, path).stdout)


def map_json(tool, path, *extra):
    return json.loads(tool("map", "--output=json", *extra, path).stdout)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def driver_available(name):
    """Whether libvmm registers the block driver `name`."""
    lib = lib_handle()
    found = []
    cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p)

    def cb(_ud, n, _help):
        found.append(n.decode())
        return 0
    lib.vmm_list_types(b"block-driver", cb_type(cb), None)
    return name in found


_lib = None


def lib_handle():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(LIBVMM)
        lib.vmm_block_open.restype = ctypes.c_void_p
        lib.vmm_block_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        lib.vmm_block_close.argtypes = [ctypes.c_void_p]
        lib.vmm_block_size.restype = ctypes.c_int64
        lib.vmm_block_size.argtypes = [ctypes.c_void_p]
        lib.vmm_block_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
        lib.vmm_block_write.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p,
                                        ctypes.c_size_t, ctypes.c_uint]
        lib.vmm_block_submit.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.vmm_block_drain.argtypes = [ctypes.c_void_p]
        lib.vmm_block_completion_fd.argtypes = [ctypes.c_void_p]
        lib.vmm_block_dispatch.argtypes = [ctypes.c_void_p]
        # Every call that takes the handle needs argtypes: without them
        # ctypes passes a Python int as a 32-bit C int and cuts the pointer.
        lib.vmm_block_discard.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
        lib.vmm_block_write_zeroes.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                               ctypes.c_uint]
        lib.vmm_block_block_status.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                               ctypes.c_void_p]
        lib.vmm_get_error.restype = ctypes.c_char_p
        _lib = lib
    return _lib


def last_error():
    return lib_handle().vmm_get_error().decode()


VMM_BLOCK_RDWR = 1
VMM_BLOCK_FORCE_SHARE = 4
