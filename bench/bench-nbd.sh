#!/bin/bash
# NBD benchmarks: libvmm's server (vmm-img serve) vs qemu-nbd under nbdcopy,
# and libvmm's client (vmm-img convert nbd+unix://) vs qemu-img convert from
# the same nbdkit server.  One run each; prints seconds and ratios
# (qemu time / libvmm time: >= 1.0 means libvmm is as fast or faster).
# Usage: bench/bench-nbd.sh [BUILD_DIR] [SIZE_MiB]   (default build, 2048)
set -euo pipefail
BUILD=${1:-build}
MIB=${2:-2048}
VMM_IMG=$(realpath "$BUILD/tools/vmm-img/vmm-img")
DIR=$(mktemp -d /var/tmp/bench-nbd.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

now() { date +%s.%N; }
timed() { local t0; t0=$(now); "$@" >/dev/null; echo "$(now) - $t0" | bc -l; }
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
start() { local sock=$1; shift; rm -f "$sock"; "$@" >/dev/null 2>&1 & PIDS+=($!); wait_sock "$sock"; }
stop_last() { local p=${PIDS[-1]}; kill "$p"; wait "$p" 2>/dev/null || true; unset 'PIDS[-1]'; }
uri() { echo "nbd+unix:///?socket=$1"; }

echo "preparing a ${MIB} MiB image of random data..." >&2
head -c $((MIB << 20)) /dev/urandom > "$DIR/src.raw"
sync

# 1. nbdcopy reading an export (4 connections, multi-conn)
start "$DIR/v.sock" "$VMM_IMG" serve -t -r -e 4 -f raw -k "$DIR/v.sock" "$DIR/src.raw"
cat "$DIR/src.raw" > /dev/null
read_vmm=$(timed nbdcopy "$(uri "$DIR/v.sock")" null:)
stop_last
start "$DIR/q.sock" qemu-nbd -t -r -e 4 -f raw -k "$DIR/q.sock" "$DIR/src.raw"
read_qemu=$(timed nbdcopy "$(uri "$DIR/q.sock")" null:)
stop_last

# 2. nbdcopy writing into an export
truncate -s $((MIB << 20)) "$DIR/dst-v.raw" "$DIR/dst-q.raw"
start "$DIR/v.sock" "$VMM_IMG" serve -t -e 4 -f raw -k "$DIR/v.sock" "$DIR/dst-v.raw"
write_vmm=$(timed nbdcopy "$DIR/src.raw" "$(uri "$DIR/v.sock")")
stop_last
start "$DIR/q.sock" qemu-nbd -t -e 4 -f raw -k "$DIR/q.sock" "$DIR/dst-q.raw"
write_qemu=$(timed nbdcopy "$DIR/src.raw" "$(uri "$DIR/q.sock")")
stop_last
cmp "$DIR/dst-v.raw" "$DIR/src.raw"
rm -f "$DIR/dst-v.raw" "$DIR/dst-q.raw"

# 3. convert from an nbdkit server (file plugin) with each client
start "$DIR/k.sock" nbdkit -f -U "$DIR/k.sock" file "$DIR/src.raw"
conv_vmm=$(timed "$VMM_IMG" convert -f raw -O raw "$(uri "$DIR/k.sock")" "$DIR/out-v.raw")
rm -f "$DIR/out-v.raw"
conv_qemu=$(timed qemu-img convert -f raw -O raw "$(uri "$DIR/k.sock")" "$DIR/out-q.raw")
rm -f "$DIR/out-q.raw"
stop_last

printf "%-44s %9s %9s %7s\n" "benchmark (${MIB} MiB)" "libvmm s" "qemu s" "ratio"
row() { printf "%-44s %9.2f %9.2f %6.2fx\n" "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"; }
row "nbdcopy read: vmm-img serve vs qemu-nbd" "$read_vmm" "$read_qemu"
row "nbdcopy write: vmm-img serve vs qemu-nbd" "$write_vmm" "$write_qemu"
row "convert from nbdkit: vmm-img vs qemu-img" "$conv_vmm" "$conv_qemu"
