"""CPU per poll of serve's core, this checkout against another one, alternating.

    python bench/ab_core.py --against /path/to/other/checkout [--procs 1000] [--rounds 6] [--polls 20]

What one poll costs the ``serve`` process without subscribers, minus the sockets: the core's
thread (scan /proc, update the groups, build the events, and whatever the checkout's
service registers with its core) and the hub numbering and encoding the events. Measured
in a child process per checkout and round (``--one ROOT``), with CPU time
(``time.process_time``), so each checkout runs its own code; the rounds alternate between
the two checkouts so that a machine whose load changes over the run weighs on both alike.

``--procs N`` polls a generated /proc-like tree of N copies of a captured process
(tests/fixtures/proc), which other jobs on the machine can't change between rounds; with
``--procs 0`` it polls the real /proc. Prints each round and the medians, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

HERE = Path(__file__).resolve().parents[1]


def one(root: str, procfs: str, polls: int) -> float:
    """Median CPU seconds per poll of the core of the checkout at ``root`` (in this process)."""
    sys.path.insert(0, root)
    from procstream.collect.core import Core
    from procstream.config import default_config
    from procstream.events import EventBuilder
    from procstream.grouper import Grouper
    from procstream.procfs import FS
    from procstream.stream.hub import Hub
    from procstream.stream.sink import HubAndLog

    assert Path(sys.modules["procstream"].__file__).is_relative_to(root), "imported another checkout"
    fs = FS(procfs)
    grouper = Grouper(default_config())
    hub = Hub(host="bench", interval=1.0)
    sink = HubAndLog(hub)
    core = Core(fs.all_procs, grouper, EventBuilder(username=grouper.username), sink)
    listeners = []
    if hasattr(core, "on_live"):  # what the checkout's service wires (per-process numbers)
        core.on_live(hub.set_live)
        hub.watch_interest(lambda i: core.want_updates(None))
        listeners.append(hub.set_live)

    def poll() -> None:
        r = core._poll(0)
        live = getattr(r, "live", None)
        if live is not None:
            for listener in listeners:
                listener(live)
        if r.baseline:
            sink.load_state(r.groups, r.procs)
        else:
            sink.publish(r.events)

    poll()
    poll()
    samples = []
    for _ in range(polls):
        t0 = time.process_time()
        poll()
        samples.append(time.process_time() - t0)
    core.close()
    return statistics.median(samples)


def fake_tree(n: int) -> Path:
    """N copies of tests/fixtures/proc's pid 1000 (a sleeping ``sleep``), with the tree's stat."""
    src = HERE / "tests" / "fixtures" / "proc"
    root = Path(tempfile.mkdtemp(prefix="procstream-ab-"))
    (root / "stat").write_bytes((src / "stat").read_bytes())
    for i in range(n):
        pid = 20_000 + i
        dst = root / str(pid)
        shutil.copytree(src / "1000", dst, symlinks=True)
        stat = (src / "1000" / "stat").read_bytes()
        head, _, rest = stat.rpartition(b")")
        fields = rest.split()
        fields[19] = str(60_000 + i).encode()  # distinct start times
        (dst / "stat").write_bytes(f"{pid} (sleep".encode() + b") " + b" ".join(fields) + b"\n")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", help="the other checkout (its repository root)")
    ap.add_argument("--procs", type=int, default=1000, help="processes of the generated tree (0: the real /proc)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--polls", type=int, default=20)
    ap.add_argument("--one", metavar="ROOT", help=argparse.SUPPRESS)
    ap.add_argument("--procfs", default="/proc", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.procfs, args.polls)))
        return 0
    if not args.against:
        ap.error("--against is required")
    tree = fake_tree(args.procs) if args.procs else None
    procfs = str(tree) if tree else "/proc"
    runs: dict[str, list[float]] = {"this": [], "other": []}
    roots = {"this": str(HERE), "other": str(Path(args.against).resolve())}
    try:
        for i in range(args.rounds):
            for name in (("this", "other") if i % 2 == 0 else ("other", "this")):
                out = subprocess.run(
                    [sys.executable, __file__, "--one", roots[name], "--procfs", procfs, "--polls", str(args.polls)],
                    capture_output=True, text=True, check=True, cwd="/",
                )
                runs[name].append(json.loads(out.stdout))
            print(f"round {i + 1}: this {runs['this'][-1] * 1e3:.2f} ms, other {runs['other'][-1] * 1e3:.2f} ms",
                  flush=True)
    finally:
        if tree is not None:
            shutil.rmtree(tree)
    this, other = statistics.median(runs["this"]), statistics.median(runs["other"])
    where = f"a generated tree of {args.procs} processes" if args.procs else "the real /proc"
    print(f"core per poll on {where}, medians of {args.rounds} rounds of {args.polls} polls:")
    print(f"   this checkout  {this * 1e3:8.2f} ms  ({roots['this']})")
    print(f"   other          {other * 1e3:8.2f} ms  ({roots['other']})")
    print(f"   this / other = {this / other:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
