#!/usr/bin/env bash
# Core benchmarks of issue 2: libvmm against a peer, same guest, same run.
# Prints one table: row, libvmm, peer, ratio, target, met?
#
# Usage: bench/run-core.sh [BUILD_DIR]   (default: build)
# Environment knobs (defaults in brackets):
#   RUNS [20]          process runs per side for the start-up rows
#   PIO_SMALL [10000]  PIO_LARGE [200000]  guest `out`s for the PIO rows
#   PIO_RUNS [5]       process runs per side and per N for the PIO rows
#   MPS_SECONDS [3]    length of each machines-per-second loop
#   QEMU [qemu-system-x86_64]
# See bench/README.md for what each row measures.  Timings only print;
# nothing here asserts them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
build=$(cd "${1:-build}" && pwd)
RUNS=${RUNS:-20}
PIO_SMALL=${PIO_SMALL:-10000}
PIO_LARGE=${PIO_LARGE:-200000}
PIO_RUNS=${PIO_RUNS:-5}
MPS_SECONDS=${MPS_SECONDS:-3}
QEMU=${QEMU:-qemu-system-x86_64}

proc_stats=$build/bench/proc-stats
bare_kvm=$build/bench/bare-kvm
mps=$build/bench/machines-per-second
vmm_run=$build/tools/vmm-run/vmm-run
guests=$build/tests/guest
hello=$guests/hello-exit.elf
pio=$guests/pio-loop.elf
for f in "$proc_stats" "$bare_kvm" "$mps" "$vmm_run" "$hello" "$pio"; do
    if [ ! -x "$f" ] && [ ! -f "$f" ]; then
        echo "run-core.sh: $f is missing: build first (meson setup $build && ninja -C $build)" >&2
        exit 1
    fi
done
if ! command -v "$QEMU" >/dev/null; then
    echo "run-core.sh: $QEMU not found (apt-get install qemu-system-x86)" >&2
    exit 1
fi

# The machine and CPU options the test guests need under QEMU (the "qemu"
# section of tests/guest/expectations.json).
expectations=$src/tests/guest/expectations.json
json_field() {
    sed -n '/"qemu"/,/}/s/.*"'"$1"'": *"\([^"]*\)".*/\1/p' "$expectations" | head -n1
}
qemu_machine=$(json_field machine)
qemu_cpu=$(json_field cpu)
: "${qemu_machine:=microvm}" "${qemu_cpu:=host}"

exit_dev="isa-debug-exit,iobase=0xf4,iosize=4"
vmm_cmd=("$vmm_run" --serial none --device "$exit_dev")
qemu_cmd=("$QEMU" -enable-kvm -cpu "$qemu_cpu" -machine "$qemu_machine" -nodefaults
          -no-user-config -nographic -serial none -device "$exit_dev")

# field KEY LINE: the value of KEY=... in a key=value line.
field() {
    tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"
}

progress() {
    echo "run-core.sh: $*" >&2
}

# Every guest run must end with the guest's success status 33; a failed
# measurement prints its reason on stderr and leaves its cells "failed".
stats() {
    local runs=$1 timeout=10
    shift
    [ "$runs" = "$PIO_RUNS" ] && timeout=60
    "$proc_stats" --runs "$runs" --status 33 --timeout "$timeout" -- "$@" || echo "failed=1"
}

progress "start-up: $RUNS runs of vmm-run and of $QEMU (-machine $qemu_machine -cpu $qemu_cpu)"
vmm_start=$(stats "$RUNS" "${vmm_cmd[@]}" --kernel "$hello")
qemu_start=$(stats "$RUNS" "${qemu_cmd[@]}" -kernel "$hello")
bare_start=$(stats "$RUNS" "$bare_kvm" "$hello")

progress "PIO exits: pio-loop count=$PIO_SMALL and count=$PIO_LARGE, $PIO_RUNS runs each, libvmm and bare-kvm"
pio_wall() { # SIDE N -> median wall ms
    if [ "$1" = libvmm ]; then
        field wall_ms "$(stats "$PIO_RUNS" "${vmm_cmd[@]}" --kernel "$pio" --append "count=$2")"
    else
        field wall_ms "$(stats "$PIO_RUNS" "$bare_kvm" "$pio" "count=$2")"
    fi
}
vmm_pio_small=$(pio_wall libvmm "$PIO_SMALL")
bare_pio_small=$(pio_wall bare "$PIO_SMALL")
vmm_pio_large=$(pio_wall libvmm "$PIO_LARGE")
bare_pio_large=$(pio_wall bare "$PIO_LARGE")

progress "machines per second: ${MPS_SECONDS}s with 1 thread, ${MPS_SECONDS}s with 2 threads"
mps1=$("$mps" --threads 1 --seconds "$MPS_SECONDS" "$hello" || true)
mps2=$("$mps" --threads 2 --seconds "$MPS_SECONDS" "$hello" || true)

awk -v vmm_start="$vmm_start" -v qemu_start="$qemu_start" -v bare_start="$bare_start" \
    -v n_small="$PIO_SMALL" -v n_large="$PIO_LARGE" \
    -v vs="$vmm_pio_small" -v vl="$vmm_pio_large" -v bs="$bare_pio_small" -v bl="$bare_pio_large" \
    -v mps1="$mps1" -v mps2="$mps2" -v runs="$RUNS" -v pio_runs="$PIO_RUNS" '
function raw(line, key,    n, i, kv, parts) {
    n = split(line, parts, " ")
    for (i = 1; i <= n; i++) {
        split(parts[i], kv, "=")
        if (kv[1] == key)
            return kv[2]
    }
    return ""
}
# A number, or -1 when the measurement failed or is missing.
function get(line, key,    v) {
    v = raw(line, key)
    return v == "" || raw(line, "failed") != "" ? -1 : v + 0
}
function note_failures(what, line,    f) {
    f = get(line, "failures")
    if (f > 0)
        printf "NOTE: %s: %d of %d runs failed or hung (see stderr); medians are of the other %d\n", what, f, f + get(line, "runs"), get(line, "runs")
}
function cell(fmt, v) {
    return v < 0 ? "failed" : sprintf(fmt, v)
}
function row(name, a, b, fmt, target, met) {
    ratio = (a >= 0 && b > 0) ? sprintf("%.2f", a / b) : "-"
    verdict = (a >= 0 && met) ? "yes" : "NO"
    printf "%-44s %12s %12s %7s  %-10s %s\n", name, cell(fmt, a), cell(fmt, b), ratio, target, verdict
}
BEGIN {
    printf "%-44s %12s %12s %7s  %-10s %s\n", "row (libvmm vs peer)", "libvmm", "peer", "ratio", "target", "met?"
    printf "%-44s %12s %12s %7s  %-10s %s\n", "--------------------", "------", "----", "-----", "------", "----"
    vw = get(vmm_start, "wall_ms"); qw = get(qemu_start, "wall_ms"); bw = get(bare_start, "wall_ms")
    vc = get(vmm_start, "cpu_ms"); qc = get(qemu_start, "cpu_ms"); bc = get(bare_start, "cpu_ms")
    vr = get(vmm_start, "maxrss_kib") / 1024; qr = get(qemu_start, "maxrss_kib") / 1024
    br = get(bare_start, "maxrss_kib") / 1024
    vf = get(vmm_start, "failures")
    row("1a start->exit wall ms (vs qemu microvm)", vw, qw, "%.1f", "<= 5 ms", vw <= 5 && vf == 0)
    row("1b start->exit CPU ms, user+sys (vs qemu)", vc, qc, "%.1f", "-", 1)
    row("2  peak RSS MiB (vs qemu)", vr, qr, "%.2f", "<= 4 MiB", vr <= 4 && vf == 0)
    # exits/s from the difference of two loop lengths: start-up cancels out.
    ve = vs > 0 && vl > vs ? (n_large - n_small) / ((vl - vs) / 1000) : -1
    be = bs > 0 && bl > bs ? (n_large - n_small) / ((bl - bs) / 1000) : -1
    row("3  PIO exits/s (vs bare KVM_RUN loop)", ve, be, "%.0f", ">= 0.95", ve >= 0.95 * be)
    m1 = get(mps1, "per_s"); m2 = get(mps2, "per_s")
    row("4a machines/s, 1 thread (vs 1000/qemu wall)", m1, qw > 0 ? 1000 / qw : -1, "%.1f", ">= 20/s", m1 >= 20)
    row("4b machines/s, 2 threads (vs 1 thread)", m2, m1, "%.1f", ">= 20/s", m2 >= 20)
    print ""
    if (raw(mps1, "stalled_in") != "" || raw(mps2, "stalled_in") != "")
        printf "NOTE: machines/s stalled: a libvmm call did not return for 10 s (1 thread: %s, 2 threads: %s);\n      the rate counts machines completed before the stall.\n",
               raw(mps1, "stalled_in") == "" ? "-" : raw(mps1, "stalled_in"), raw(mps2, "stalled_in") == "" ? "-" : raw(mps2, "stalled_in")
    note_failures("vmm-run hello-exit", vmm_start); note_failures("qemu hello-exit", qemu_start)
    note_failures("bare-kvm hello-exit", bare_start)
    print "For reference (not targets):"
    printf "  bare-kvm floor for hello-exit: wall %.1f ms, CPU %.1f ms, RSS %.2f MiB; libvmm/bare wall %.2f\n", bw, bc, br, vw / bw
    printf "  wall min over %d runs: libvmm %.1f ms, qemu %.1f ms, bare-kvm %.1f ms\n", runs,
           get(vmm_start, "wall_min_ms"), get(qemu_start, "wall_min_ms"), get(bare_start, "wall_min_ms")
    printf "  CPU split user/sys ms: libvmm %.1f/%.1f, qemu %.1f/%.1f\n", get(vmm_start, "user_ms"),
           get(vmm_start, "sys_ms"), get(qemu_start, "user_ms"), get(qemu_start, "sys_ms")
    printf "  PIO median wall ms (count=%d / count=%d, %d runs each): libvmm %.1f / %.1f, bare-kvm %.1f / %.1f\n",
           n_small, n_large, pio_runs, vs, vl, bs, bl
    printf "  per-exit cost: libvmm %.2f us, bare-kvm %.2f us\n", 1e6 / ve, 1e6 / be
    printf "  machines/s medians, 1 thread: cycle %.1f ms, new->first serial byte %.1f ms, start() %.1f ms, free() %.1f ms (%d machines)\n",
           get(mps1, "cycle_ms"), get(mps1, "first_output_ms"), get(mps1, "start_ms"), get(mps1, "free_ms"), get(mps1, "machines")
    printf "  machines/s medians, 2 threads: cycle %.1f ms, new->first serial byte %.1f ms, start() %.1f ms, free() %.1f ms (%d machines)\n",
           get(mps2, "cycle_ms"), get(mps2, "first_output_ms"), get(mps2, "start_ms"), get(mps2, "free_ms"), get(mps2, "machines")
}'
