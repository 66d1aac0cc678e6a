#!/usr/bin/env bash
# `make demo`: boot the bundled demo guest with vmm-run and show what it saw.
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/.."
vmm_run=$build/tools/vmm-run/vmm-run
guest=$build/tests/guest/demo.elf
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  echo "demo: /dev/kvm is missing or not accessible; libvmm needs KVM to run a guest" >&2
  exit 1
fi
# boot ARGS...: run vmm-run with the console on stdout; sets $status.
boot() {
  local cmd=("$vmm_run" "$@" --device isa-debug-exit,iobase=0xf4,iosize=4 --serial stdio)
  echo "\$ ${cmd[*]}"
  echo "---- guest console ----"
  set +e
  "${cmd[@]}" </dev/null
  status=$?
  set -e
  echo "---- end of console ----"
}

boot --kernel "$guest" --cpus 2 --memory 256M --append demo
if [ "$status" -eq 33 ]; then
  echo "demo: the guest booted through PVH on 2 vCPUs, read the ACPI tables, the memory"
  echo "demo: map, the RTC, and exited through the test-exit port (status 33 = success)."
else
  echo "demo: the guest ended with status $status (33 means success)" >&2
  exit 1
fi

# Part two: machine pc, a qcow2 disk made by vmm-img on virtio-blk-pci; the
# guest's own virtio driver writes, flushes, reads back, discards.
vmm_img=$build/tools/vmm-img/vmm-img
disk=$(mktemp -d)/demo.qcow2
trap 'rm -rf "$(dirname "$disk")"' EXIT
"$vmm_img" create -q -f qcow2 "$disk" 4M
echo
boot --machine pc --kernel "$build/tests/guest/virtio/virtio-blk.elf" --memory 256M \
     --append "transport=pci getid=1 serial=demo-disk" \
     --drive "file=$disk,format=qcow2,discard=unmap,serial=demo-disk"
if [ "$status" -ne 33 ]; then
  echo "demo: the virtio-blk guest ended with status $status (33 means success)" >&2
  exit 1
fi
echo "\$ $vmm_img check $disk"
"$vmm_img" check "$disk"
echo "demo: PCI enumeration, MSI-X, and a virtio-blk disk on a qcow2 image that the"
echo "demo: guest wrote, flushed, read back and discarded; the image checks clean."
