"""The viewer under load: frame times and long tasks measured in the page.

    python bench/viewer.py [--groups 2000] [--rate 200] [--interval 1] [--seconds 15] [--web DIR]

A real ``ProcstreamServer`` (in this process, port 0, serving ``web/``) is fed
by a synthetic producer: ``--groups`` groups with two processes each, a ``group.update``
for every group each poll (the worst case: all of them changed) plus a ``cycle``, and
``--rate`` process events per second (half starts, half exits, spread over the second
in batches every 50 ms, as the kernel source sends them). Debian's Chromium (headless,
through Playwright) shows the viewer; the page measures itself:

- frames: the interval between requestAnimationFrame callbacks (p50/p95/p99/max, and
  the share of frames over 25 ms, i.e. visibly late at 60 Hz);
- long tasks: main-thread tasks over 50 ms (PerformanceObserver "longtask");
- main-thread CPU: from a Chrome trace of the renderer's main thread, the CPU time of
  its tasks (thread time, so a machine busy with other work does not inflate it): per
  second, and the p99 and longest task. Frame and long-task figures are wall-clock and
  do suffer from a busy machine; the CPU figures are the ones to compare across runs;
- attribute writes: every attribute the page sets or removes on an element in the
  document (a MutationObserver; rows being filled in while detached don't count), per
  second, and of those the ``aria-rowindex`` writes; each one is work for the style
  engine and the accessibility tree, even when it writes the value already there.

Scenarios, each measured for ``--seconds``: the page left alone (sorted by CPU, which
re-sorts every poll), the groups table scrolled by the mouse wheel all along, a group
selected with the log filtered, and the log scrolled down (reading older entries while
new ones arrive on top). With ``--procs N``, one more group holds N processes whose
numbers all change at every poll (``proc.update``, to the viewer's second connection,
which asks for them once the group is open), and a last scenario shows them in the
processes panel, sorted by CPU (re-sorted every poll). A run with no load at all is measured first as the reference:
the figures print as they are and as ratios to it. ``--web DIR`` serves the viewer in
DIR instead of this checkout's (another version of it, to compare in one sitting).
Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from procstream.stream.hub import Hub  # noqa: E402
from procstream.serve.server import ProcstreamServer, ServerConfig  # noqa: E402

__all__ = ["main"]

CHROMIUM = "/usr/bin/chromium"
BIG = "svc-big"  # the group of --procs processes
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# Installed before the page's own scripts: records frame intervals, long tasks and
# attribute writes (by attribute name).
MEASURE_JS = """
window.__perf = { frames: [], longtasks: [], attrs: {}, t0: 0, on: false };
(() => {
  new MutationObserver((records) => {
    if (!window.__perf.on) return;
    const attrs = window.__perf.attrs;
    for (const r of records) attrs[r.attributeName] = (attrs[r.attributeName] || 0) + 1;
  }).observe(document, { subtree: true, attributes: true });
  let last = 0;
  const tick = (t) => {
    if (window.__perf.on && last) window.__perf.frames.push(t - last);
    last = t;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => {
    if (!window.__perf.on) return;
    for (const e of list.getEntries()) window.__perf.longtasks.push(e.duration);
  }).observe({ type: 'longtask', buffered: false });
})();
"""

START_JS = """() => { window.__perf.frames = []; window.__perf.longtasks = []; window.__perf.attrs = {};
    window.__perf.t0 = performance.now(); window.__perf.on = true; }"""
# Waits a frame first, so that the observer has reported the last writes measured.
STOP_JS = """async () => {
    await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
    window.__perf.on = false;
    const p = window.__perf;
    return { frames: p.frames, longtasks: p.longtasks, attrs: p.attrs, span: performance.now() - p.t0 };
}"""


class Producer:
    """Synthetic events shaped like the real producer's, published into a Hub."""

    def __init__(self, hub: Hub, groups: int, rate: float, interval: float, big: int = 0) -> None:
        self.hub = hub
        self.rate = rate
        self.interval = interval
        self.names = [f"svc-{i:04d}" for i in range(groups)]
        self.churn = list(self.names)  # where processes start and exit (BIG keeps its own)
        self.big: list[dict[str, Any]] = []  # the processes of BIG, whose numbers are live
        self.next_pid = 10_000
        self.alive: dict[str, list[dict[str, Any]]] = {n: [] for n in self.names}
        self.published = 0
        self.rng = random.Random(1)
        now = time.time()
        self.cpu = {n: 0.0 for n in self.names}
        procs: list[dict[str, Any]] = []
        for name in self.names:
            for _ in range(2):
                p = self.proc(name, now - self.rng.uniform(10, 90_000))
                self.alive[name].append(p)
                procs.append(p)
        if big:
            self.names.append(BIG)
            self.cpu[BIG] = 0.0
            self.alive[BIG] = self.big
            for _ in range(big):
                p = self.proc(BIG, now - self.rng.uniform(10, 90_000))
                self.big.append(p)
                procs.append(p)
        self.numbers = {p["pid"]: self.live(p) for p in self.big}
        hub.set_live(self)
        hub.load_state({n: self.group(n) for n in self.names}, procs)

    def live(self, p: dict[str, Any]) -> dict[str, Any]:
        """Made-up numbers of one process (they change at every call, like a busy one's)."""
        r = self.rng
        return {
            "cpu_pct": round(r.expovariate(1 / 5), 2), "cpu_s": round(r.uniform(1, 5000), 3),
            "mem_resident": r.randrange(5, 500) * 1_048_576, "mem_virtual": r.randrange(100, 2000) * 1_048_576,
            "mem_swap": 0, "threads": r.randrange(1, 30), "open_fds": r.randrange(5, 300),
            "fd_ratio": round(r.uniform(0, 0.3), 6), "state": r.choice("SSSSRD"),
            "read_bps": round(r.expovariate(1 / 5e4), 1), "write_bps": round(r.expovariate(1 / 5e4), 1),
        }  # fmt: skip

    def fields(self, pid: int, start_time: float | None = None) -> dict[str, Any] | None:
        """The hub's view of the latest numbers (its snapshots carry them)."""
        return self.numbers.get(pid)

    def proc(self, group: str, start: float) -> dict[str, Any]:
        self.next_pid += 1
        return {
            "pid": self.next_pid, "ppid": 1, "start_time": round(start, 3), "name": group,
            "cmdline": [f"/usr/bin/{group}", "--worker", str(self.next_pid)], "group": group,
            "user": "www-data", "uid": 33,
        }  # fmt: skip

    def group(self, name: str) -> dict[str, Any]:
        procs = len(self.alive[name])
        return {
            "group": name, "procs": procs, "threads": procs * 3, "cpu_s": 1.0, "cpu_user_s": 0.7,
            "cpu_system_s": 0.3, "cpu_pct": round(self.cpu[name], 2), "read_bytes": 0, "write_bytes": 0,
            "read_bps": round(self.rng.uniform(0, 5e5)), "write_bps": round(self.rng.uniform(0, 5e5)),
            "mem_resident": procs * 50_000_000, "mem_virtual": procs * 200_000_000, "mem_swap": 0,
            "open_fds": procs * 20, "worst_fd_ratio": 0.02, "major_faults": 0, "minor_faults": 1000,
            "ctx_voluntary": 10, "ctx_nonvoluntary": 1, "oldest_start_time": min(
                (p["start_time"] for p in self.alive[name]), default=0.0),
            "states": {"running": 0, "sleeping": procs * 3, "waiting": 0, "zombie": 0, "other": 0},
        }  # fmt: skip

    def proc_batch(self, n: int) -> list[dict[str, Any]]:
        now = time.time()
        out: list[dict[str, Any]] = []
        for i in range(n):
            name = self.rng.choice(self.churn)
            if i % 2 == 0 or not self.alive[name]:
                p = self.proc(name, now)
                self.alive[name].append(p)
                out.append({"type": "proc.start", "ts": now, **p, "source": "netlink"})
            else:
                p = self.alive[name].pop(0)
                out.append({
                    "type": "proc.exit", "ts": now, **p, "lifetime_s": round(now - p["start_time"], 3),
                    "cpu_s": 0.01, "read_bytes": 0, "write_bytes": 0,
                    "exit_code": self.rng.choice([0, 0, 0, 1]), "signal": None, "source": "netlink",
                })  # fmt: skip
        return out

    def poll_batch(self, duration_ms: float) -> list[dict[str, Any]]:
        now = time.time()
        events: list[dict[str, Any]] = []
        for name in self.names:
            self.cpu[name] = max(0.0, self.cpu[name] * 0.7 + self.rng.expovariate(1 / 3))
            events.append({"type": "group.update", "ts": now, **self.group(name)})
        if self.big and self.hub.interest is not None:  # someone watches: every number changed
            for p in self.big:
                numbers = self.numbers[p["pid"]] = self.live(p)
                events.append({"type": "proc.update", "ts": now, "pid": p["pid"], "start_time": p["start_time"],
                               "group": BIG, **numbers})
        events.append({
            "type": "cycle", "ts": now, "duration_ms": duration_ms, "procs_seen": 4000, "tracked": 4000,
            "started": 0, "exited": 0, "permission_errors": 0, "read_errors": 0, "partial_errors": 0,
        })  # fmt: skip
        return events

    async def run(self, load: threading.Event) -> None:
        """Publish until cancelled; only while ``load`` is set."""
        step = 0.05
        per_step = self.rate * step
        carry = 0.0
        next_poll = time.monotonic() + self.interval
        while True:
            await asyncio.sleep(step)
            if not load.is_set():
                next_poll = time.monotonic() + self.interval
                continue
            carry += per_step
            n = int(carry)
            carry -= n
            batch = self.proc_batch(n) if n else []
            if time.monotonic() >= next_poll:
                next_poll += self.interval
                t0 = time.perf_counter()
                poll = self.poll_batch(0.0)
                poll[-1]["duration_ms"] = round((time.perf_counter() - t0) * 1000, 3)
                batch += poll
            if batch:
                self.hub.publish(batch)
                self.published += len(batch)


class Backend:
    """Server and producer on an event loop in a thread."""

    def __init__(self, groups: int, rate: float, interval: float, web: str | None = None, procs: int = 0) -> None:
        self.args = (groups, rate, interval, procs)
        self.web = web
        self.load = threading.Event()
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.producer: Producer | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        groups, rate, interval, procs = self.args
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        hub = Hub(host="bench-host", interval=interval)
        self.producer = Producer(hub, groups, rate, interval, procs)
        async with ProcstreamServer(hub, ServerConfig(port=0, static_dir=self.web)) as srv:
            self.port = srv.port
            task = asyncio.create_task(self.producer.run(self.load))
            self.ready.set()
            await self._stop.wait()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def start(self) -> Backend:
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the bench server did not start")
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main_thread_tasks(trace: bytes) -> list[float]:
    """CPU milliseconds of each top-level task of the renderer's main thread."""
    doc = json.loads(trace)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    main = {
        (e["pid"], e["tid"]) for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"
    }  # fmt: skip
    return [
        e.get("tdur", e.get("dur", 0)) / 1000 for e in events
        if e.get("ph") == "X" and e.get("name") == "RunTask" and (e.get("pid"), e.get("tid")) in main
    ]  # fmt: skip


def summarize(raw: dict[str, Any], tasks: list[float]) -> dict[str, Any]:
    frames: list[float] = raw["frames"]
    long: list[float] = raw["longtasks"]
    attrs: dict[str, int] = raw["attrs"]
    span_s = raw["span"] / 1000
    return {
        "attrs": sum(attrs.values()) / span_s if span_s else float("nan"),
        "rowindex": attrs.get("aria-rowindex", 0) / span_s if span_s else float("nan"),
        "by_attr": {k: v / span_s for k, v in sorted(attrs.items(), key=lambda kv: -kv[1])} if span_s else {},
        "cpu": sum(tasks) / span_s if span_s else float("nan"),
        "task_p99": pct(tasks, 0.99),
        "task_max": max(tasks, default=0.0),
        "fps": len(frames) / span_s if span_s else float("nan"),
        "p50": statistics.median(frames) if frames else float("nan"),
        "p95": pct(frames, 0.95),
        "p99": pct(frames, 0.99),
        "max": max(frames, default=float("nan")),
        "late": 100 * sum(1 for f in frames if f > 25) / len(frames) if frames else float("nan"),
        "long_n": len(long),
        "long_max": max(long, default=0.0),
    }


def measure(browser: Any, page: Any, seconds: float, action: Any = None) -> dict[str, Any]:
    browser.start_tracing(page=page, categories=["devtools.timeline", "disabled-by-default-devtools.timeline"])
    page.evaluate(START_JS)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if action is not None:
            action()
        page.wait_for_timeout(50)
    raw = page.evaluate(STOP_JS)
    return summarize(raw, main_thread_tasks(browser.stop_tracing()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=200.0, help="process events per second")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    ap.add_argument("--seconds", type=float, default=15.0, help="measurement time per scenario")
    ap.add_argument("--web", help="serve the viewer in this directory (default: this checkout's web/)")
    ap.add_argument("--procs", type=int, default=0, metavar="N",
                    help=f"a group {BIG!r} of N processes with live numbers, shown in the processes panel last")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    backend = Backend(args.groups, args.rate, args.interval, args.web, args.procs).start()
    url = f"http://127.0.0.1:{backend.port}/"
    results: list[tuple[str, dict[str, Any]]] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.add_init_script(MEASURE_JS)
                page.goto(url)
                page.wait_for_selector("#conn[data-state=live]", timeout=30_000)
                n_groups = args.groups + (1 if args.procs else 0)
                page.wait_for_function(
                    f"() => document.getElementById('n-groups').textContent === '{n_groups:,}'", timeout=30_000
                )
                results.append(("reference: no events", measure(browser, page, args.seconds)))

                backend.load.set()
                page.wait_for_timeout(2000)  # let the first polls and sparklines arrive
                assert backend.producer is not None
                sent0 = backend.producer.published
                t0 = time.monotonic()
                results.append(("loaded, left alone", measure(browser, page, args.seconds)))
                rate = (backend.producer.published - sent0) / (time.monotonic() - t0)

                box = page.locator("#groups-scroll").bounding_box()
                assert box is not None
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                direction = [1]

                def wheel() -> None:
                    top = page.evaluate("document.getElementById('groups-scroll').scrollTop")
                    if top > 40_000:
                        direction[0] = -1
                    elif top <= 0:
                        direction[0] = 1
                    page.mouse.wheel(0, 400 * direction[0])

                results.append(("loaded, scrolling groups", measure(browser, page, args.seconds, wheel)))
                page.mouse.move(5, 5)
                page.locator("#groups-table tbody tr:not(.pad)").nth(3).click()
                page.fill("#log-group", "svc-00")
                page.mouse.move(5, 5)
                results.append(("loaded, group open, log filtered", measure(browser, page, args.seconds)))
                page.fill("#log-group", "")
                page.evaluate("document.getElementById('log-scroll').scrollTop = 600")
                results.append(("loaded, log scrolled down", measure(browser, page, args.seconds)))
                if args.procs:
                    page.evaluate("document.getElementById('log-scroll').scrollTop = 0")
                    page.fill("#group-filter", BIG)
                    page.locator("#groups-table tbody tr:not(.pad)").first.click()
                    page.fill("#group-filter", "")
                    page.locator("#procs-table th.c-cpu button").click()  # by CPU, re-sorted each poll
                    page.wait_for_function(
                        f"() => document.getElementById('procs-count').textContent === '{args.procs:,}'")
                    page.mouse.move(5, 5)
                    page.wait_for_timeout(2000)  # the live connection's snapshot and first polls
                    results.append((f"loaded, {args.procs} live processes", measure(browser, page, args.seconds)))
                state = page.evaluate(
                    "() => ({rows: document.querySelectorAll('#groups-table tbody tr').length,"
                    " log: document.getElementById('log-count').textContent,"
                    " rate: document.getElementById('ev-rate').textContent,"
                    " conn: document.getElementById('conn').dataset.state})"
                )
            finally:
                browser.close()
    finally:
        backend.load.clear()
        backend.stop()

    print(f"viewer bench: {args.groups} groups, {args.rate:g} process events/s + a group.update per group "
          f"every {args.interval:g} s; {args.seconds:g} s per scenario")
    print(f"events published while measured: {rate:,.0f}/s; page says {state['rate']} events/s, "
          f"connection {state['conn']}, {state['rows']} <tr> in the groups table, log {state['log']}")
    ref = results[0][1]
    print(f"{'':34} {'main-thread CPU':^25} | {'frames (wall clock, ms)':^40} | long tasks  | attribute writes/s")
    print(f"{'scenario':34} {'ms/s':>7} {'p99 task':>8} {'max':>8} | {'fps':>5} {'p50':>6} {'p95':>6} "
          f"{'p99':>6} {'max':>6} {'>25ms':>6} | {'n':>4} {'max':>6} | {'all':>7} {'rowindex':>8}")
    for name, r in results:
        print(f"{name:34} {r['cpu']:7.1f} {r['task_p99']:8.1f} {r['task_max']:8.1f} | {r['fps']:5.1f} "
              f"{r['p50']:6.1f} {r['p95']:6.1f} {r['p99']:6.1f} {r['max']:6.1f} {r['late']:5.1f}% | "
              f"{r['long_n']:4d} {r['long_max']:6.1f} | {r['attrs']:7.1f} {r['rowindex']:8.1f}")
    for name, r in results:
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(r["by_attr"].items())[:6])
        print(f"attribute writes/s, {name}: {top or 'none'}")
    for name, r in results[1:]:
        print(f"vs reference, {name}: main-thread CPU {r['cpu'] / ref['cpu']:.1f}x "
              f"({r['cpu'] / 10:.1f} % of one core), fps {r['fps'] / ref['fps']:.2f}x")
    if errors:
        print("page errors:", *errors, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
