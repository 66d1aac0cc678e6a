#!/usr/bin/env bash
# `meson test --wrapper` for the ASan build.  Test programs built here carry
# the sanitizers themselves.  Python test drivers run Debian's unsanitized
# python3, which must have the sanitizer runtime preloaded to load the
# ASan-built libvmm.so (ctypes/cffi); tests/asan-site/sitecustomize.py then
# keeps that preload away from the programs they start and gives libvmm's
# own tools their leak checks back.
here=$(cd "$(dirname "$0")/.." && pwd)
case "$(basename "$1")" in
  python3*)
    export VMM_CHILD_ASAN_OPTIONS="${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}verify_asan_link_order=0"
    export ASAN_OPTIONS=detect_leaks=0
    export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
    export PYTHONPATH="$here/tests/asan-site${PYTHONPATH:+:$PYTHONPATH}"
    ;;
esac
exec "$@"
