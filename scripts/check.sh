#!/usr/bin/env bash
# Run every meson test suite in the normal build, then the unit suite and
# the suites that drive libvmm through its tools, Python and guests again in
# the ASan+UBSan build, then the fuzz suite (a short run of every libFuzzer
# harness) in the fuzzing build, and print one closing line:
# "N passed, N failed, N skipped".
set -uo pipefail
build=$1 asan=$2 fuzz=$3; shift 3
status=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
sanitizer_checks="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1"

meson test -C "$build" --print-errorlogs --num-processes 2 --logbase check "$@" || status=1

# The ASan+UBSan build: C unit tests, then the suites that drive libvmm
# through its tools, Python and guests (see scripts/asan-wrapper.sh).
ASAN_OPTIONS=$sanitizer_checks \
  meson test -C "$asan" --suite unit --print-errorlogs --num-processes 2 --logbase asan-unit "$@" || status=1
ASAN_OPTIONS=$sanitizer_checks \
  meson test -C "$asan" --no-suite unit --no-suite fuzz --no-suite qemu --no-suite kernel \
  --no-suite valgrind --no-suite abi --wrapper "$PWD/scripts/asan-wrapper.sh" \
  --print-errorlogs --num-processes 2 --logbase asan-python "$@" || status=1

meson test -C "$fuzz" --suite fuzz --print-errorlogs --num-processes 2 --logbase fuzz "$@" || status=1

count() { # $1 = result names (comma separated); totals over every log of this run
  # meson names a wrapped run's log after the wrapper: asan-python-*.json
  python3 - "$1" "$build"/meson-logs/check*.json "$asan"/meson-logs/asan-*.json \
    "$fuzz"/meson-logs/fuzz*.json <<'PY'
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
