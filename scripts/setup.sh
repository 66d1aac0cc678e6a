#!/usr/bin/env bash
# Install the Debian packages libvmm needs to build and test, and fetch the
# stock Debian kernel the boot test uses.  As root it installs what is
# missing; otherwise it prints the apt-get line and fails.
set -euo pipefail
cd "$(dirname "$0")/.."

build_packages=(meson ninja-build pkg-config gcc libc6-dev make
  libglib2.0-dev libaio-dev libpixman-1-dev zlib1g-dev libnl-3-dev libnl-route-3-dev
  libspice-server-dev libjson-glib-dev libslirp-dev libseccomp-dev libcmocka-dev)
test_packages=(qemu-system-x86 qemu-utils nbdkit libnbd-bin python3-libnbd
  python3-pytest python3-cffi python3-dev valgrind socat clang libclang-rt-14-dev
  iproute2 seabios abigail-tools acpica-tools)

want=("${build_packages[@]}")
[ "${1:-}" = "--test" ] && want+=("${test_packages[@]}")

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages; run as root:  apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The stock kernel for tests/guest's Linux boot test, kept out of the tree.
if [ "${1:-}" = "--test" ]; then
  cache=.cache/kernel
  if ! ls "$cache"/boot/vmlinuz-* >/dev/null 2>&1; then
    mkdir -p "$cache"
    ( cd "$cache"
      pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
      if [ -n "$pkg" ] && apt-get download "$pkg" >/dev/null 2>&1; then
        dpkg -x ./*.deb . && rm -f ./*.deb
      else
        echo "warning: could not download the Debian kernel; the kernel boot test will skip" >&2
      fi )
  fi
fi
