#!/usr/bin/env bash
# Run every meson test suite in the normal build and the unit suite under
# ASan+UBSan, then print one closing line: "N passed, N failed, N skipped".
set -uo pipefail
build=$1 asan=$2; shift 2
status=0
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

meson test -C "$build" --print-errorlogs --num-processes 2 "$@" || status=1
meson test -C "$asan" --suite unit --suite block --print-errorlogs --num-processes 2 "$@" || status=1

count() { # $1 = build dir, $2 = result word in meson's JSON log
  python3 - "$1/meson-logs/testlog.json" "$2" <<'PY'
import json, sys
n = 0
try:
    for line in open(sys.argv[1]):
        if json.loads(line).get("result") in sys.argv[2].split(","):
            n += 1
except FileNotFoundError:
    pass
print(n)
PY
}
passed=$(( $(count "$build" OK) + $(count "$asan" OK) ))
failed=$(( $(count "$build" FAIL,TIMEOUT,ERROR,UNEXPECTEDPASS) + $(count "$asan" FAIL,TIMEOUT,ERROR,UNEXPECTEDPASS) ))
skipped=$(( $(count "$build" SKIP) + $(count "$asan" SKIP) ))
echo "$passed passed, $failed failed, $skipped skipped"
[ "$passed" -gt 0 ] || status=1
exit $status
