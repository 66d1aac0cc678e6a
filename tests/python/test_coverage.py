"""Every function libvmm.so exports is reachable from Python: declared in
the package's cdef, resolvable through libvmm.lib, and used by the
high-level classes unless listed in NOT_WRAPPED with a reason."""
import os
import re
import subprocess

import libvmm
from libvmm import _ffi

BUILD = os.environ.get("VMM_BUILD_DIR", "build")
LIBRARY = os.path.join(BUILD, "lib", "libvmm.so.0")
PACKAGE = os.path.dirname(libvmm.__file__)


def exported_functions():
    out = subprocess.run(["nm", "-D", "--defined-only", LIBRARY], capture_output=True, text=True,
                         check=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("T", "W", "i"):
            names.add(parts[2].split("@")[0])
    return names


def package_source():
    text = ""
    for name in ("__init__.py", "qmp.py"):
        with open(os.path.join(PACKAGE, name)) as f:
            text += f.read()
    return text


def test_the_library_exports_functions():
    names = exported_functions()
    assert "vmm_machine_new" in names and "vmm_control_serve" in names
    assert not [n for n in names if not n.startswith("vmm_")], names


def test_every_export_is_declared_and_resolves():
    declared = set(re.findall(r"\b(vmm_\w+)\s*\(", _ffi.CDEF))
    missing = sorted(exported_functions() - declared)
    assert not missing, "exported but not declared in bindings/python/libvmm/_ffi.py: %s" % missing
    for name in exported_functions():
        assert callable(getattr(libvmm.lib, name)), name


def test_every_export_is_wrapped_or_excused():
    source = package_source()
    unwrapped = sorted(n for n in exported_functions()
                       if "lib.%s(" % n not in source and n not in _ffi.NOT_WRAPPED)
    assert not unwrapped, "neither wrapped nor in NOT_WRAPPED: %s" % unwrapped
    for name, reason in _ffi.NOT_WRAPPED.items():
        assert name in exported_functions(), "stale NOT_WRAPPED entry %s" % name
        assert len(reason) > 20, name


def test_declared_functions_exist():
    declared = set(re.findall(r"\b(vmm_\w+)\s*\(", _ffi.CDEF)) - {"vmm_log_fn"}
    stale = sorted(d for d in declared if d not in exported_functions() and not d.endswith("_fn"))
    assert not stale, "declared but not exported: %s" % stale
