#!/usr/bin/python3
"""Fail if a test guest contains instructions the nested KVM here cannot run.

Usage: check-insns.py GUEST_ELF...

The in-kernel emulator behind this machine's KVM fails on int3, clac/stac,
popcnt, xrstor and cmpxchg16b (../shared/ENVIRONMENT.md); SSE/AVX registers
would also need FPU state the runtime never sets up.  The guests' build flags
are meant to keep gcc from emitting any of these; this checks the result.
"""
import re
import shutil
import subprocess
import sys

FORBIDDEN = re.compile(
    r"\t(int3|clac|stac|popcnt\w*|xrstor\w*|xsave\w*|fxrstor\w*|lock cmpxchg16b|cmpxchg16b|endbr64)\b"
    r"|%[xy]mm\d+")


def main():
    objdump = shutil.which("objdump")
    if not objdump:
        print("SKIP: objdump not found")
        return 77
    bad = 0
    for elf in sys.argv[1:]:
        out = subprocess.run([objdump, "-d", "--no-show-raw-insn", elf], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        hits = [line.strip() for line in out.splitlines() if FORBIDDEN.search(line)]
        for h in hits:
            print(f"{elf}: {h}")
        bad += len(hits)
        print(f"{elf}: {len(hits)} forbidden instructions")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
