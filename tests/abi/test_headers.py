"""Each public header compiles alone, as C99 with -pedantic and as C++, so
embedders can include any of them in any order (and none leaks GLib)."""
import glob
import os
import shutil
import subprocess

import pytest

SOURCE = os.environ.get("VMM_SOURCE_DIR", ".")
INCLUDE = os.path.join(SOURCE, "lib", "include")
HEADERS = sorted(os.path.basename(h) for h in glob.glob(os.path.join(INCLUDE, "libvmm", "*.h")))

C_FLAGS = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"]
CXX_FLAGS = ["-std=c++11", "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"]


def compile_alone(compiler, flags, header, tmp_path, suffix):
    src = tmp_path / ("use-%s%s" % (header.replace(".", "-"), suffix))
    # Include it twice (guards) and use a declaration so the compiler reads it.
    src.write_text('#include <libvmm/%s>\n#include <libvmm/%s>\n'
                   'const char *(*libvmm_header_test)(void) = 0;\n' % (header, header))
    return subprocess.run([compiler, *flags, "-I", INCLUDE, str(src)], capture_output=True,
                          text=True)


def test_headers_found():
    assert {"common.h", "machine.h", "block.h", "control.h", "libvmm.h"} <= set(HEADERS)


@pytest.mark.parametrize("header", HEADERS)
def test_c99_pedantic(header, tmp_path):
    p = compile_alone("cc", C_FLAGS, header, tmp_path, ".c")
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(not shutil.which("c++"), reason="no C++ compiler")
@pytest.mark.parametrize("header", HEADERS)
def test_cplusplus(header, tmp_path):
    p = compile_alone("c++", CXX_FLAGS, header, tmp_path, ".cc")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("header", HEADERS)
def test_no_glib_in_public_headers(header):
    text = open(os.path.join(INCLUDE, "libvmm", header)).read()
    for word in ("glib.h", "gchar", "gboolean", "GMainContext", "gpointer"):
        assert word not in text, (header, word)


def test_the_compile_test_can_fail(tmp_path):
    bad = tmp_path / "libvmm"
    bad.mkdir()
    (bad / "bad.h").write_text("int f();\nint x = 0,;\n")
    src = tmp_path / "use.c"
    src.write_text("#include <libvmm/bad.h>\n")
    p = subprocess.run(["cc", *C_FLAGS, "-I", str(tmp_path), str(src)], capture_output=True)
    assert p.returncode != 0
