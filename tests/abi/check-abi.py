#!/usr/bin/env python3
"""ABI check: abidiff the built libvmm.so.0 against the committed baseline
abi/libvmm.abi.  Added functions pass; removed or changed functions, and
changed public types (except members appended to the end of a struct that
starts with `size`), fail.

    check-abi.py SOURCE_DIR LIBRARY             check (meson test 'abi-baseline')
    check-abi.py SOURCE_DIR LIBRARY --update    rewrite abi/libvmm.abi
"""
import os
import shutil
import subprocess
import sys
import tempfile


def abidw(source, library, out):
    subprocess.run(["abidw", "--headers-dir", os.path.join(source, "lib", "include", "libvmm"),
                    "--no-corpus-path", "--no-comp-dir-path", "--no-show-locs",
                    "--out-file", out, library], check=True)


def has_debug_info(library):
    out = subprocess.run(["readelf", "-S", library], capture_output=True, text=True).stdout
    return ".debug_info" in out


def main():
    source, library = sys.argv[1], sys.argv[2]
    baseline = os.path.join(source, "abi", "libvmm.abi")
    if not shutil.which("abidw") or not shutil.which("abidiff"):
        print("SKIP: abigail-tools is not installed (apt-get install abigail-tools)")
        return 77
    if not has_debug_info(library):
        print("SKIP: %s has no debug info (build with -g, e.g. buildtype=debugoptimized)" % library)
        return 77
    if "--update" in sys.argv:
        abidw(source, library, baseline)
        print("wrote", baseline)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        current = os.path.join(tmp, "current.abi")
        abidw(source, library, current)
        p = subprocess.run(["abidiff", "--no-added-syms", "--suppressions",
                            os.path.join(source, "tests", "abi", "abi-suppressions.ini"),
                            baseline, current], capture_output=True, text=True)
    print(p.stdout, p.stderr)
    if p.returncode & 1:
        print("abidiff failed to run (status %d)" % p.returncode)
        return 1
    if p.returncode & (4 | 8):
        print("ABI break against abi/libvmm.abi (status %d): see the report above.\n"
              "If the change is deliberate, update the baseline (see tests/abi/README.md)."
              % p.returncode)
        return 1
    print("ABI compatible with abi/libvmm.abi")
    return 0


if __name__ == "__main__":
    sys.exit(main())
