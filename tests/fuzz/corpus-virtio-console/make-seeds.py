#!/usr/bin/python3
"""Write the seeds for fuzz-virtio-console (layout: see the harness)."""
import os
import struct
import sys

def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)

def ring(ram, q, descs, heads):
    base = q * 0x400
    for i, d in enumerate(descs):
        ram[base + 16 * i: base + 16 * i + 16] = d
    ram[base + 0x100: base + 0x104 + 2 * len(heads)] = struct.pack("<HH%dH" % len(heads), 0, len(heads), *heads)

def seed(flags, spec):
    ram = bytearray(0x1b00)
    msgs = [(0, 0, 1), (1, 3, 1), (1, 6, 1), (99, 6, 1), (0, 3, 1)]
    for i, m in enumerate(msgs):
        ram[0x1700 + 16 * i: 0x1708 + 16 * i] = struct.pack("<IHH", *m)
    ring(ram, 3, [desc(0x1700 + 16 * i, 8) for i in range(len(msgs))], list(range(len(msgs))))
    ring(ram, 2, [desc(0x1800 + 0x80 * i, 0x80, 2) for i in range(4)], [0, 1, 2, 3])
    ring(ram, 4, [desc(0x1a00, 64, 2)], [0])
    ram[0x1a80:0x1a86] = b"hello\n"
    ring(ram, 5, [desc(0x1a80, 6)], [0])
    ring(ram, 1, [desc(0x1a80, 6)], [0])
    ring(ram, 0, [desc(0x1a40, 32, 2)], [0])
    return bytes([flags, 16]) + spec + b"\0" + bytes(ram)

out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
for name, flags, spec in [("multiport", 7, b"socket,id=s,path=/tmp/x.sock,server=on,wait=off"),
                          ("console-only", 0, b"file,id=f,path=/tmp/x,append=on")]:
    with open(os.path.join(out, name), "wb") as f:
        f.write(seed(flags, spec))
