"""Loaded by Python in the ASan test run (scripts/check.sh puts this folder
on PYTHONPATH).  The interpreter itself runs with the sanitizer runtime
preloaded so ctypes/cffi can load the ASan-built libvmm.so; the programs the
tests start must not inherit that preload (qemu-img under ASan hangs in its
coroutines), and libvmm's own ASan-built tools get leak checking back."""
import os

os.environ.pop("LD_PRELOAD", None)
child = os.environ.pop("VMM_CHILD_ASAN_OPTIONS", None)
if child is not None:
    os.environ["ASAN_OPTIONS"] = child
