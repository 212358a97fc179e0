"""Benchmark procstream.taskstats by hand: decoding cost and an exit storm.

    python bench/taskstats_storm.py [--rate 1000] [--seconds 10] [--stalled] [--with-connector]

Prints the decode cost per exit record (constructed datagrams shaped like the kernel's,
no syscalls), then runs a generator process that forks children which ``_exit`` at once,
``--rate`` per second for ``--seconds``, while one reader thread drains a
TaskstatsListener (16 MiB buffer requested; ``--with-connector``: and a ProcConnector
in the same poll). ``--stalled``: the reader does not read until the storm is over, so
the receive buffer alone must hold every record. Reports what the reader got of the
generator's children, losses, and the reader thread's CPU. Needs root in the initial
namespaces.
"""

from __future__ import annotations

import argparse
import os
import select
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from procstream import netlink as nl  # noqa: E402
from procstream import taskstats as tsm  # noqa: E402

__all__: list[str] = []

GENERATOR = r"""
import os, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
n = int(rate * seconds)
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.readline()
start = time.monotonic()
for i in range(n):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    if os.fork() == 0:
        os._exit(i % 256)
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


def _stats(version: int = 16, size: int = 560, **fields: int) -> bytes:
    buf = bytearray(size)
    struct.pack_into("=HxxI", buf, 0, version, fields.get("exitcode", 0))
    struct.pack_into("=32s", buf, 80, b"worker")
    struct.pack_into("=5I", buf, 120, 0, 0, fields.get("pid", 1), 1, 1_700_000_000)
    struct.pack_into("=5Q", buf, 144, 1000, 2000, 3000, 4, 5)
    struct.pack_into("=Q", buf, 344, 1_700_000_000)
    struct.pack_into("=IxxxxQ", buf, 368, fields.get("tgid", 1), 1000)
    return bytes(buf)


def _nla(t: int, payload: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(payload), t) + payload
    return body + b"\0" * (-len(body) % 4)


def _msg(*aggrs: bytes) -> bytes:
    payload = struct.pack("=BBH", 2, 1, 0) + b"".join(aggrs)
    return struct.pack("=IHHII", 16 + len(payload), 31, 0, 0, 0) + payload


def bench_decode(n: int = 200_000) -> tuple[float, float]:
    """µs per datagram: a thread's exit (one record), a process's last thread (two)."""
    one = _msg(_nla(4, _nla(1, struct.pack("=I", 7)) + _nla(3, _stats(pid=7, tgid=7))))
    two = _msg(
        _nla(4, _nla(1, struct.pack("=I", 8)) + _nla(3, _stats(pid=8, tgid=7))),
        _nla(5, _nla(2, struct.pack("=I", 7)) + _nla(3, _stats(size=560))),
    )
    results = []
    for data, per in ((one, 1), (two, 2)):
        view = memoryview(bytearray(data))  # as the listener hands it over
        stats = tsm.DecodeStats()
        out: list[tsm.TaskstatsEvent] = []
        t0 = time.perf_counter()
        for _ in range(n):
            tsm._decode(view, stats, out, None, 31)
        dt = time.perf_counter() - t0
        assert len(out) == n * per and stats.malformed == 0
        results.append(dt / n * 1e6)
    return results[0], results[1]


def bench_storm(rate: float, seconds: float, stalled: bool, with_connector: bool) -> None:
    ts = tsm.TaskstatsListener().open()
    conn = nl.ProcConnector().open() if with_connector else None
    gen = subprocess.Popen(
        [sys.executable, "-S", "-c", GENERATOR, str(rate), str(seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert gen.stdout is not None and gen.stdin is not None
    assert gen.stdout.readline().strip() == "ready"
    gpid = gen.pid
    records: dict[int, tsm.TaskExit] = {}
    conn_exits: set[int] = set()
    losses: list[tsm.EventsLost] = []
    counts = {"records": 0, "connector": 0, "biggest": 0}
    stop = threading.Event()
    go = threading.Event()
    cpu = [0.0]

    def reader() -> None:
        poller = select.poll()
        poller.register(ts.fileno(), select.POLLIN)
        if conn is not None:
            poller.register(conn.fileno(), select.POLLIN)
        go.wait()
        t0 = time.thread_time()
        while not stop.is_set():
            for fd, _ in poller.poll(100):
                if fd == ts.fileno():
                    batch = ts.read_events()
                    counts["records"] += len(batch)
                    counts["biggest"] = max(counts["biggest"], len(batch))
                    for rec in batch:
                        if isinstance(rec, tsm.TaskExit):
                            if rec.ppid == gpid and rec.aggregate == "pid":
                                records[rec.pid] = rec
                        else:
                            losses.append(rec)
                elif conn is not None:
                    for ev in conn.read_events():
                        counts["connector"] += 1
                        if isinstance(ev, nl.ExitEvent) and not ev.is_thread:
                            conn_exits.add(ev.pid)
        cpu[0] = time.thread_time() - t0

    thread = threading.Thread(target=reader)
    thread.start()
    if not stalled:
        go.set()
    wall0 = time.monotonic()
    try:
        gen.stdin.write("go\n")
        gen.stdin.flush()
        made, took = gen.stdout.readline().split()
        queued = ts.rcvbuf  # (effective size, for the report)
        go.set()
        deadline = time.monotonic() + 10
        while len(records) < int(made) and time.monotonic() < deadline and not losses:
            time.sleep(0.05)
    finally:
        go.set()
        stop.set()
        thread.join()
        gen.wait()
        ts.close()
        if conn is not None:
            conn.close()
    wall = time.monotonic() - wall0
    codes_ok = sum(1 for r in records.values() if r.code is not None)
    mode = "stalled reader (buffer only)" if stalled else "live reader"
    print(
        f"storm, {mode}{' + proc connector' if conn else ''}: {made} children in {took} s "
        f"({int(made) / float(took):.0f}/s); taskstats records of them {len(records)} "
        f"({codes_ok} with an exit code); all records read {counts['records']} "
        f"(largest batch {counts['biggest']}); loss markers {len(losses)} "
        f"(enobufs {ts.enobufs}, dropped {ts.dropped}); "
        + (f"connector events {counts['connector']}, its exits {len(conn_exits)}; " if conn else "")
        + f"reader CPU {cpu[0]:.2f} s over {wall:.1f} s ({100 * cpu[0] / wall:.1f} % of a core); "
        f"rcvbuf {queued >> 20} MiB effective"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--stalled", action="store_true", help="read only after the storm")
    parser.add_argument("--with-connector", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    if not args.skip_decode:
        one, two = bench_decode()
        print(f"decode: {one:.2f} µs per thread/process exit datagram (1 record), "
              f"{two:.2f} µs for a multi-threaded process's last exit (2 records)")
    ok, reason = tsm.probe()
    print(reason)
    if ok:
        bench_storm(args.rate, args.seconds, args.stalled, args.with_connector)


if __name__ == "__main__":
    main()
