"""The exported symbols are exactly the documented API: what libvmm.so
exports equals lib/libvmm.map's global list and the LIBVMM_EXPORT
declarations of lib/include/libvmm/*.h, each declaration has a comment, and
the library has the right soname and symbol version."""
import glob
import os
import re
import subprocess

BUILD = os.environ.get("VMM_BUILD_DIR", "build")
SOURCE = os.environ.get("VMM_SOURCE_DIR", ".")
LIBRARY = os.path.join(BUILD, "lib", "libvmm.so.0")
HEADERS = sorted(glob.glob(os.path.join(SOURCE, "lib", "include", "libvmm", "*.h")))
MAP = os.path.join(SOURCE, "lib", "libvmm.map")


def exported():
    out = subprocess.run(["nm", "-D", "--defined-only", LIBRARY], capture_output=True, text=True,
                         check=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            name, _, version = parts[2].partition("@")
            symbols[name] = version.lstrip("@")
    return {k: v for k, v in symbols.items() if not k.startswith("LIBVMM_")}


def map_globals():
    text = re.sub(r"/\*.*?\*/", "", open(MAP).read(), flags=re.S)
    names = set()
    for block in re.finditer(r"global:(.*?)(local:|};)", text, flags=re.S):
        names |= set(re.findall(r"\b(\w+);", block.group(1)))
    return names


def header_declarations():
    """{name: (header, documented)} for every LIBVMM_EXPORT declaration."""
    decls = {}
    for header in HEADERS:
        lines = open(header).read().splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("LIBVMM_EXPORT"):
                continue
            m = re.search(r"\b(vmm_\w+)\s*\(", line)
            assert m, "%s:%d: cannot read the declaration" % (header, i + 1)
            decls[m.group(1)] = (os.path.basename(header), documented(lines, i))
    return decls


def documented(lines, i):
    """A comment ends right above the declaration, or above the run of
    declarations (no blank line between) that it belongs to."""
    j = i - 1
    while j >= 0:
        text = lines[j].strip()
        if text.endswith("*/"):
            return True
        if not text or text.startswith("#"):
            return False
        j -= 1  # part of an earlier declaration of the same group (or a typedef)
    return False


def test_exports_match_the_version_script():
    exports, listed = set(exported()), map_globals()
    assert not sorted(exports - listed), "exported but not in libvmm.map"
    assert not sorted(listed - exports), "in libvmm.map but not exported: %s" % sorted(listed - exports)


def test_exports_match_the_headers():
    exports, declared = set(exported()), set(header_declarations())
    assert not sorted(exports - declared), "exported but not declared LIBVMM_EXPORT: %s" % sorted(
        exports - declared)
    assert not sorted(declared - exports), "declared LIBVMM_EXPORT but not exported: %s" % sorted(
        declared - exports)


def test_every_declaration_is_documented():
    undocumented = sorted("%s: %s" % (h, n) for n, (h, ok) in header_declarations().items() if not ok)
    assert not undocumented, "no comment above: %s" % undocumented


def test_soname_and_symbol_versions():
    out = subprocess.run(["readelf", "-d", LIBRARY], capture_output=True, text=True,
                         check=True).stdout
    assert "Library soname: [libvmm.so.0]" in out
    versions = set(exported().values())
    assert versions and all(re.fullmatch(r"LIBVMM_\d+\.\d+", v) for v in versions), versions


def test_the_checks_can_fail(tmp_path):
    lines = ["/* doc */", "LIBVMM_EXPORT int vmm_a(void);", "", "LIBVMM_EXPORT int vmm_b(void);"]
    assert documented(lines, 1) and not documented(lines, 3)
