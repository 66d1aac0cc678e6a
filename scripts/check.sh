#!/usr/bin/env bash
# Run every meson test suite in the normal build, then the unit, block,
# tools and control suites again in the ASan+UBSan build, and print one
# closing line: "N passed, N failed, N skipped".
set -uo pipefail
build=$1 asan=$2; shift 2
status=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
sanitizer_checks="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1"

meson test -C "$build" --print-errorlogs --num-processes 2 --logbase check "$@" || status=1

# C tests link the sanitizers themselves.
ASAN_OPTIONS=$sanitizer_checks \
  meson test -C "$asan" --suite unit --print-errorlogs --num-processes 2 --logbase asan-unit "$@" || status=1

# Python-driven tests load the ASan-built libvmm.so into Debian's (unsanitized)
# python3, which needs the runtime preloaded; tests/asan-site keeps that
# preload away from the programs the tests start.
runtime="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
LD_PRELOAD=$runtime ASAN_OPTIONS=detect_leaks=0 VMM_CHILD_ASAN_OPTIONS=$sanitizer_checks \
  PYTHONPATH="$PWD/tests/asan-site" \
  meson test -C "$asan" --no-suite unit --no-suite fuzz --no-suite qemu --no-suite kernel \
  --no-suite valgrind --no-suite abi --print-errorlogs --num-processes 2 \
  --logbase asan-python "$@" || status=1

count() { # $1 = result names (comma separated); totals over every log of this run
  python3 - "$1" "$build/meson-logs/check.json" "$asan/meson-logs/asan-unit.json" \
    "$asan/meson-logs/asan-python.json" <<'PY'
import json, sys
wanted, n = sys.argv[1].split(","), 0
for path in sys.argv[2:]:
    try:
        for line in open(path):
            if json.loads(line).get("result") in wanted:
                n += 1
    except FileNotFoundError:
        pass
print(n)
PY
}
passed=$(count OK,EXPECTEDFAIL)
failed=$(count FAIL,TIMEOUT,ERROR,UNEXPECTEDPASS)
skipped=$(count SKIP)
echo "$passed passed, $failed failed, $skipped skipped"
[ "$passed" -gt 0 ] || status=1
exit $status
