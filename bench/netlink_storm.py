"""Benchmark procstream.netlink by hand: decoding speed and a fork storm read by one thread.

    python bench/netlink_storm.py [--rate 1000] [--seconds 10] [--exec]

Prints events/s the decoder handles (constructed datagrams, no syscalls), then runs a
generator process that forks (``--exec``: spawns /bin/true) at ``--rate`` per second for
``--seconds`` while one reader thread drains a ProcConnector; reports what the reader saw
of the generator's children, losses, and the reader thread's CPU time. Needs root (or
CAP_NET_ADMIN) in the initial namespaces.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from procstream import netlink as nl  # noqa: E402

__all__: list[str] = []

GENERATOR = r"""
import os, sys, time
rate, seconds, use_exec = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
n = int(rate * seconds)
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.readline()
start = time.monotonic()
for i in range(n):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    if use_exec:
        os.posix_spawn("/bin/true", ["true"], {})
    else:
        if os.fork() == 0:
            os._exit(0)
    while True:  # reap what has finished, without blocking
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
sys.stdout.write(f"{n} {time.monotonic() - start:.3f}\n"); sys.stdout.flush()
"""


def bench_decode(n: int = 300_000) -> float:
    """Events per second through Decoder.feed, one event per datagram like the kernel."""

    def msg(what: int, body: bytes, seq: int) -> bytes:
        ev = struct.pack("=IIQ", what, 0, 1) + body
        ev += b"\0" * (40 - len(ev))
        cn = struct.pack("=IIIIHH", 1, 1, seq, 0, len(ev), 0) + ev
        return struct.pack("=IHHII", 16 + len(cn), 3, 0, seq, 0) + cn

    datagrams = []
    for i in range(n // 3):
        datagrams.append(msg(1, struct.pack("=iiii", 1, 1, i, i), 3 * i))
        datagrams.append(msg(2, struct.pack("=ii", i, i), 3 * i + 1))
        datagrams.append(msg(0x80000000, struct.pack("=iiIiii", i, i, 0, 17, 1, 1), 3 * i + 2))
    dec = nl.Decoder()
    out: list[nl.ConnectorEvent] = []
    t0 = time.perf_counter()
    for d in datagrams:
        dec.feed(d, out)
    dt = time.perf_counter() - t0
    assert len(out) == len(datagrams) and dec.stats.missed == 0
    return len(out) / dt


def bench_storm(rate: float, seconds: float, use_exec: bool) -> None:
    conn = nl.ProcConnector().open()
    gen = subprocess.Popen(
        [sys.executable, "-S", "-c", GENERATOR, str(rate), str(seconds), "1" if use_exec else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert gen.stdout is not None and gen.stdin is not None
    assert gen.stdout.readline().strip() == "ready"
    gpid = gen.pid
    children: set[int] = set()
    exited: set[int] = set()
    execs = 0
    total = 0
    biggest = 0
    losses: list[nl.EventsLost] = []
    stop = threading.Event()
    cpu = [0.0]

    def reader() -> None:
        nonlocal execs, total, biggest
        t0 = time.thread_time()
        while not stop.is_set():
            if not conn.wait_readable(0.1):
                continue
            batch = conn.read_events()
            total += len(batch)
            biggest = max(biggest, len(batch))
            for ev in batch:
                if isinstance(ev, nl.ForkEvent):
                    if ev.parent_tgid == gpid and not ev.is_thread:
                        children.add(ev.child_pid)
                elif isinstance(ev, nl.ExitEvent):
                    # not parent_tgid: it reads 0 when the parent reaped the child first
                    if ev.pid in children:
                        exited.add(ev.pid)
                elif isinstance(ev, nl.ExecEvent):
                    if ev.pid in children:
                        execs += 1
                elif isinstance(ev, nl.EventsLost):
                    losses.append(ev)
        cpu[0] = time.thread_time() - t0

    thread = threading.Thread(target=reader)
    thread.start()
    wall0 = time.monotonic()
    try:
        gen.stdin.write("go\n")
        gen.stdin.flush()
        made, took = gen.stdout.readline().split()
        # give the reader a moment to drain what is queued, with a deadline
        deadline = time.monotonic() + 5
        while len(exited) < int(made) and time.monotonic() < deadline and not losses:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
        gen.wait()
        conn.close()
    wall = time.monotonic() - wall0
    kind = "spawn /bin/true" if use_exec else "fork+_exit"
    print(
        f"storm ({kind}): {made} children in {took} s ({int(made) / float(took):.0f}/s); "
        f"reader saw fork {len(children)}, exit {len(exited)}, exec {execs}; "
        f"all events read {total} ({total / wall:.0f}/s, largest batch {biggest}); "
        f"loss markers {len(losses)} (enobufs {conn.enobufs}, missed by seq {conn.stats.missed}); "
        f"reader CPU {cpu[0]:.2f} s over {wall:.1f} s ({100 * cpu[0] / wall:.1f} % of a core); "
        f"rcvbuf {nl.DEFAULT_RCVBUF >> 20} MiB requested"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--exec", action="store_true", help="spawn /bin/true instead of fork")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    if not args.skip_decode:
        print(f"decode: {bench_decode():,.0f} events/s (Decoder.feed, one event per datagram)")
    ok, reason = nl.probe()
    if not ok:
        print(reason)
        return
    bench_storm(args.rate, args.seconds, args.exec)


if __name__ == "__main__":
    main()
