"""Lifecycle latency: from a real exit to the news at a WebSocket subscriber.

    python bench/lifecycle.py [--rounds 50] [--ooms 20]

One ``procstream serve --source netlink`` (interval 1 s) with an expected group, one
subscriber, and in the same run:

- ``--rounds`` times: the expected group's only process (a copy of ``sleep``) is killed
  with SIGKILL; latency from its exit to the ``proc.exit`` and to the ``group.missing``
  at the subscriber (the process is then started again and its ``group.recovered``
  awaited before the next round);
- ``--ooms`` times: a process in a 64 MiB memory cgroup writes 512 MiB and the kernel's OOM
  killer kills it; latency from its exit to its ``proc.exit`` with ``oom_killed: true``.

"Its exit" is the kernel's timestamp of it (the event's ``ts``, from the proc
connector); the ``waitpid`` return in this script comes later, after the parent is
woken and scheduled, so it is shown too, as a check.

Prints p50/p99/max of each, and how many events carried what they should. Needs root
(kernel events, memory cgroups). Everything it starts, it stops; the cgroup is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, free_port, wait_http  # noqa: E402  (also puts the tree on sys.path)
from _common import percentile as pct
from kernel import subscribe

__all__ = ["main"]

MEMORY = 64 << 20
HOG = 'b = b"\\x01" * (512 << 20)'


class Subscriber:
    """Every object the server sends, with its arrival time."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, dict]] = []
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()

    async def run(self, url: str) -> None:
        await subscribe(url, self.seen, self.ready, self.stop)

    async def first(self, after: int, timeout: float = 10.0, **match: object) -> tuple[float, dict]:
        """The first object like ``match`` among those received after the ``after``th."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, obj in self.seen[after:]:
                if all(obj.get(k) == v for k, v in match.items()):
                    return t, obj
            await asyncio.sleep(0.005)
        raise TimeoutError(f"no event like {match}")


def reaped_at(proc: subprocess.Popen) -> float:
    """Wait for ``proc``; the moment waitpid returned."""
    os.waitpid(proc.pid, 0)
    t = time.time()
    proc.returncode = 0  # reaped here; keep Popen from waiting again
    return t


def memory_cgroup() -> Path:
    root = Path("/sys/fs/cgroup/memory")
    if not (root / "memory.limit_in_bytes").exists():
        raise SystemExit("needs a cgroup v1 memory controller at /sys/fs/cgroup/memory")
    cg = root / f"procstream-bench-{os.getpid()}"
    cg.mkdir()
    (cg / "memory.limit_in_bytes").write_text(str(MEMORY))
    (cg / "memory.swappiness").write_text("0")
    return cg


async def run(rounds: int, ooms: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="procstream-bench-"))
    sleeper = tmp / "pslexp"
    shutil.copy("/bin/sleep", sleeper)
    marker = f"pslc-oom-bench-{os.getpid()}"
    config = tmp / "config.yml"
    config.write_text(
        "process_names:\n"
        "  - {name: exp, comm: [pslexp]}\n"
        f"  - {{name: oom, cmdline: ['{marker}']}}\n"
        "expected_groups:\n  - {group: exp, min: 1}\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "procstream", "serve", "--config", str(config), "--source", "netlink",
         "--interval", "1", "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cg: Path | None = None
    sub = Subscriber()
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        task = asyncio.create_task(sub.run(f"ws://127.0.0.1:{port}/ws?types=proc.exit,group.missing,group.recovered"))
        await asyncio.wait_for(sub.ready.wait(), 10)

        exit_lat: list[float] = []
        missing_lat: list[float] = []
        reap_lat: list[float] = []
        for _ in range(rounds):
            mark = len(sub.seen)
            proc = subprocess.Popen([str(sleeper), "600"])
            await sub.first(mark, type="group.recovered", group="exp")
            mark = len(sub.seen)
            proc.send_signal(signal.SIGKILL)
            t_exit = await asyncio.to_thread(reaped_at, proc)
            t_ev, ev = await sub.first(mark, type="proc.exit", pid=proc.pid)
            t_missing, _ = await sub.first(mark, type="group.missing", group="exp")
            exit_lat.append((t_ev - ev["ts"]) * 1000)
            missing_lat.append((t_missing - ev["ts"]) * 1000)
            reap_lat.append((t_ev - t_exit) * 1000)

        oom_lat: list[float] = []
        oom_reap_lat: list[float] = []
        flagged = 0
        if ooms:
            cg = memory_cgroup()
            for _ in range(ooms):
                mark = len(sub.seen)
                proc = subprocess.Popen(
                    ["sh", "-c", 'echo $$ > "$1" && exec "$2" -S -c "$3" "$0"', marker,
                     str(cg / "cgroup.procs"), sys.executable, HOG],
                )  # fmt: skip
                t_exit = await asyncio.to_thread(reaped_at, proc)
                t_ev, ev = await sub.first(mark, type="proc.exit", pid=proc.pid)
                oom_lat.append((t_ev - ev["ts"]) * 1000)
                oom_reap_lat.append((t_ev - t_exit) * 1000)
                flagged += ev.get("oom_killed") is True and ev.get("exit_class") == "oom_kill"
        sub.stop.set()
        await task
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        if cg is not None:
            cg.rmdir()
        shutil.rmtree(tmp)

    def row(name: str, values: list[float], note: str = "") -> None:
        print(f"{name:<44} {pct(values, 0.5):8.1f} {pct(values, 0.99):8.1f} {max(values):8.1f}  n={len(values)} {note}")

    print(f"{'from the exit to the subscriber, ms':<44} {'p50':>8} {'p99':>8} {'max':>8}")
    row("kill -9 -> proc.exit", exit_lat)
    row("kill -9 of the last process -> group.missing", missing_lat)
    if ooms:
        row("OOM kill -> proc.exit (oom_killed)", oom_lat, f"oom_killed true: {flagged}/{ooms}")
    print(f"{'from waitpid returning, ms (a check)':<44}")
    row("kill -9 -> proc.exit", reap_lat)
    if ooms:
        row("OOM kill -> proc.exit (oom_killed)", oom_reap_lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--ooms", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: kernel events and memory cgroups")
    asyncio.run(run(args.rounds, args.ooms))


if __name__ == "__main__":
    main()
