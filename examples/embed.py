#!/usr/bin/env python3
"""Embedding libvmm in Python: build a machine from keyword arguments, run a
test guest, react to its events and shut it down.

    PYTHONPATH=BUILD/bindings/python python3 examples/embed.py BUILD/tests/guest
"""
import os
import sys
import threading

import libvmm


def main(guest_dir):
    print("libvmm", libvmm.version())
    first_line = threading.Event()

    def on_serial(chunk):
        if b"\n" in chunk:
            first_line.set()

    # Part 1: a long-running guest, paused, inspected, resumed and stopped.
    with libvmm.Machine(kernel=os.path.join(guest_dir, "pio-loop.elf"),
                        cmdline="count=100000000", memory="128M", name="embedded",
                        devices=["isa-debug-exit,id=exit,iobase=0xf4,iosize=4"],
                        on_serial=on_serial,
                        on_event=lambda e: print("event:", e.name, e.reason or "")) as m:
        m.start()
        if not first_line.wait(60):
            raise SystemExit("the guest said nothing")
        print("guest says:", m.console.strip())
        m.pause()
        print("status:", m.status["status"], "vcpus:", m.vcpus())
        print("qmp query-status:", m.qmp("query-status"))
        m.resume()
        m.stop()
        names = [e.name for e in m.events(timeout=30)]
        assert names == ["STOP", "RESUME", "SHUTDOWN"], names
        print("part 1: ok (%s)" % m.exit_message)

    # Part 2: a guest that ends by itself; iterate over its events.
    with libvmm.Machine(kernel=os.path.join(guest_dir, "demo.elf"),
                        devices=["isa-debug-exit,iobase=0xf4,iosize=4"]) as m:
        m.start()
        for event in m.events(timeout=120):
            print("event:", event.name, event.reason)
        assert (m.exit_reason, m.exit_code) == ("test", 33), (m.exit_reason, m.exit_code)
        print(m.console, end="")
        print("part 2: ok (exit status %d)" % m.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/tests/guest"))
