"""Benchmark the kernel sockets by hand: decoding cost, then an exit storm read by one thread.

    python bench/kernel_storm.py [--only connector|taskstats] [--rate 1000] [--seconds 10]
                                 [--exec] [--stalled] [--skip-decode]

Decoding, on constructed datagrams shaped like the kernel's (no syscalls): proc connector
events per second through ``connector.Decoder.feed`` (fork, exec, exit; one per datagram),
and µs per TASKSTATS exit datagram (one record; two for a multi-threaded process's last
thread) through ``taskstats.Decoder.feed``, on a reused buffer as ``TaskstatsListener`` reads.

Storm: a generator process forks children that ``_exit`` at once (``--exec``: spawns
``/bin/true``), ``--rate`` per second for ``--seconds``, while one reader thread drains a
ProcConnector and a TaskstatsListener (``--only``: just one of them) in one
``select.poll``, as procstream's kernel reader does. ``--stalled``: the reader does not
read until the storm is over, so the receive buffers alone must hold everything. Reports,
per socket, what the reader got of the generator's children, the losses, the largest
batch and the effective buffer; then the reader thread's CPU. Needs root in the initial
namespaces; a socket whose probe refuses is left out, with the probe's reason.
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
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from procstream.netlink import EventsLost  # noqa: E402
from procstream.netlink import connector as nl  # noqa: E402
from procstream.netlink import taskstats as tsm  # noqa: E402

__all__ = ["main"]

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
    elif os.fork() == 0:
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


# --- decoding --------------------------------------------------------------------------------


def bench_decode_connector(n: int = 300_000) -> float:
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


def _stats(version: int = 16, size: int = 560, **fields: int) -> bytes:
    """A struct taskstats (v16 offsets) with the fields the decoder reads filled in."""
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


def _genl(*aggrs: bytes) -> bytes:
    payload = struct.pack("=BBH", 2, 1, 0) + b"".join(aggrs)
    return struct.pack("=IHHII", 16 + len(payload), 31, 0, 0, 0) + payload


def bench_decode_taskstats(n: int = 200_000) -> tuple[float, float]:
    """µs per datagram: a thread's exit (one record), a process's last thread (two)."""
    one = _genl(_nla(4, _nla(1, struct.pack("=I", 7)) + _nla(3, _stats(pid=7, tgid=7))))
    two = _genl(
        _nla(4, _nla(1, struct.pack("=I", 8)) + _nla(3, _stats(pid=8, tgid=7))),
        _nla(5, _nla(2, struct.pack("=I", 7)) + _nla(3, _stats(size=560))),
    )
    results = []
    for data, per in ((one, 1), (two, 2)):
        view = memoryview(bytearray(data))  # as the listener hands it over
        decoder = tsm.Decoder(family_id=31)
        stats = decoder.stats
        out: list[tsm.TaskstatsEvent] = []
        t0 = time.perf_counter()
        for _ in range(n):
            decoder.feed(view, out)
        dt = time.perf_counter() - t0
        assert len(out) == n * per and stats.malformed == 0
        results.append(dt / n * 1e6)
    return results[0], results[1]


# --- the storm -------------------------------------------------------------------------------


@dataclass
class ConnectorTally:
    """What the reader got from the proc connector about the generator's children."""

    gpid: int
    children: set[int] = field(default_factory=set)
    exited: set[int] = field(default_factory=set)
    execs: int = 0
    total: int = 0
    biggest: int = 0
    losses: int = 0

    def take(self, batch: list[nl.ConnectorEvent]) -> None:
        self.total += len(batch)
        self.biggest = max(self.biggest, len(batch))
        for ev in batch:
            if isinstance(ev, nl.ForkEvent):
                if ev.parent_tgid == self.gpid and not ev.is_thread:
                    self.children.add(ev.child_pid)
            elif isinstance(ev, nl.ExitEvent):
                # not parent_tgid: it reads 0 when the parent reaped the child first
                if ev.pid in self.children:
                    self.exited.add(ev.pid)
            elif isinstance(ev, nl.ExecEvent):
                if ev.pid in self.children:
                    self.execs += 1
            elif isinstance(ev, EventsLost):
                self.losses += 1

    def done(self, made: int) -> bool:
        return len(self.exited) >= made or self.losses > 0

    def report(self, sock: nl.ProcConnector, rcvbuf: int, wall: float) -> str:
        return (
            f"  connector: fork {len(self.children)}, exit {len(self.exited)}, exec {self.execs} "
            f"of them; all events read {self.total} ({self.total / wall:.0f}/s, largest batch "
            f"{self.biggest}); loss markers {self.losses} (enobufs {sock.enobufs}, missed by seq "
            f"{sock.stats.missed}); rcvbuf {rcvbuf >> 20} MiB effective"
        )


@dataclass
class TaskstatsTally:
    """What the reader got from TASKSTATS about the generator's children."""

    gpid: int
    records: dict[int, tsm.TaskExit] = field(default_factory=dict)
    total: int = 0
    biggest: int = 0
    losses: int = 0

    def take(self, batch: list[tsm.TaskstatsEvent]) -> None:
        self.total += len(batch)
        self.biggest = max(self.biggest, len(batch))
        for rec in batch:
            if isinstance(rec, tsm.TaskExit):
                if rec.ppid == self.gpid and rec.aggregate == "pid":
                    self.records[rec.pid] = rec
            else:
                self.losses += 1

    def done(self, made: int) -> bool:
        return len(self.records) >= made or self.losses > 0

    def report(self, sock: tsm.TaskstatsListener, rcvbuf: int, wall: float) -> str:
        codes = sum(1 for r in self.records.values() if r.exit_code is not None)
        return (
            f"  taskstats: records of them {len(self.records)} ({codes} with an exit code); "
            f"all records read {self.total} ({self.total / wall:.0f}/s, largest batch "
            f"{self.biggest}); loss markers {self.losses} (enobufs {sock.enobufs}, dropped "
            f"{sock.dropped}); rcvbuf {rcvbuf >> 20} MiB effective"
        )


def bench_storm(
    rate: float, seconds: float, *, use_exec: bool, stalled: bool, connector: bool, taskstats: bool
) -> None:
    conn = nl.ProcConnector().open() if connector else None
    ts = tsm.TaskstatsListener().open() if taskstats else None
    gen = subprocess.Popen(
        [sys.executable, "-S", "-c", GENERATOR, str(rate), str(seconds), "1" if use_exec else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert gen.stdout is not None and gen.stdin is not None
    assert gen.stdout.readline().strip() == "ready"
    conn_tally = ConnectorTally(gen.pid)
    ts_tally = TaskstatsTally(gen.pid)
    # (socket, its tally) by file descriptor, for the poll loop
    readers: dict[int, tuple[nl.ProcConnector | tsm.TaskstatsListener, ConnectorTally | TaskstatsTally]] = {}
    if conn is not None:
        readers[conn.fileno()] = (conn, conn_tally)
    if ts is not None:
        readers[ts.fileno()] = (ts, ts_tally)
    stop = threading.Event()
    go = threading.Event()
    cpu = [0.0]

    def reader() -> None:
        poller = select.poll()
        for fd in readers:
            poller.register(fd, select.POLLIN)
        go.wait()
        t0 = time.thread_time()
        while not stop.is_set():
            for fd, _ in poller.poll(100):
                sock, tally = readers[fd]
                tally.take(sock.read_events())  # type: ignore[arg-type]
        cpu[0] = time.thread_time() - t0

    thread = threading.Thread(target=reader)
    thread.start()
    if not stalled:
        go.set()
    wall0 = time.monotonic()
    # effective sizes, read while the sockets are open
    conn_rcvbuf = conn.rcvbuf if conn is not None else 0
    ts_rcvbuf = ts.rcvbuf if ts is not None else 0
    try:
        gen.stdin.write("go\n")
        gen.stdin.flush()
        made, took = gen.stdout.readline().split()
        go.set()
        # give the reader time to drain what is queued, with a deadline
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(t.done(int(made)) for _, t in readers.values()):
            time.sleep(0.05)
    finally:
        go.set()
        stop.set()
        thread.join()
        gen.wait()
        for sock, _ in readers.values():
            sock.close()
    wall = time.monotonic() - wall0
    kind = "spawn /bin/true" if use_exec else "fork+_exit"
    mode = "stalled reader (buffers only)" if stalled else "live reader"
    print(f"storm ({kind}, {mode}): {made} children in {took} s ({int(made) / float(took):.0f}/s)")
    if conn is not None:
        print(conn_tally.report(conn, conn_rcvbuf, wall))
    if ts is not None:
        print(ts_tally.report(ts, ts_rcvbuf, wall))
    print(f"  reader CPU {cpu[0]:.2f} s over {wall:.1f} s ({100 * cpu[0] / wall:.1f} % of a core)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", choices=("connector", "taskstats"), help="read just this socket")
    parser.add_argument("--rate", type=float, default=1000, help="children per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--exec", action="store_true", help="spawn /bin/true instead of fork")
    parser.add_argument("--stalled", action="store_true", help="read only after the storm")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    connector = args.only in (None, "connector")
    taskstats = args.only in (None, "taskstats")
    if not args.skip_decode:
        if connector:
            print(f"decode, connector: {bench_decode_connector():,.0f} events/s "
                  "(Decoder.feed, one event per datagram)")
        if taskstats:
            one, two = bench_decode_taskstats()
            print(f"decode, taskstats: {one:.2f} µs per thread/process exit datagram (1 record), "
                  f"{two:.2f} µs for a multi-threaded process's last exit (2 records)")
    if connector:
        ok, reason = nl.probe()
        print(reason)
        connector = ok
    if taskstats:
        ok, reason = tsm.probe()
        print(reason)
        taskstats = ok
    if connector or taskstats:
        bench_storm(
            args.rate, args.seconds, use_exec=args.exec, stalled=args.stalled,
            connector=connector, taskstats=taskstats,
        )  # fmt: skip


if __name__ == "__main__":
    main()
