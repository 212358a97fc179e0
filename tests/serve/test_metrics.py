"""``GET /metrics``: process-exporter's families from the latest poll, and self-metrics.

The agreement test runs the real ``prometheus-process-exporter`` (installed by .ci/run)
next to a real ``procstream serve`` with the same config over the same live processes,
started after both, so both count their whole usage.
"""

from __future__ import annotations

import math
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from procstream import __version__
from procstream.events import group_fields
from procstream.grouper import GroupCounts, GrouperUpdate
from procstream.stream.hub import HubStats
from procstream.serve.metrics import (
    CONTENT_TYPE,
    POLL_DURATION_BUCKETS,
    MetricsCollector,
    make_registry,
    render,
)
from procstream.collect.poll import PollStatus
from procstream.procfs.models import States
from procstream.tracker import CollectErrors, Counts, Memory
from tests.support.exporter import running_exporter
from tests.support.served import Client, Served, http_get
from tests.support.processes import running, stop
from tests.support.waiting import wait_for


# -- a small parser of the text format (independent of prometheus_client's) --------------

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

Key = tuple[str, frozenset[tuple[str, str]]]


class Exposition:
    """TYPE per family and every sample of one scrape."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[Key, float] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, typ = line.split(" ", 3)
                self.types[name] = typ
            elif line and not line.startswith("#"):
                m = _SAMPLE.match(line)
                assert m, f"unparsable line {line!r}"
                labels = frozenset(_LABEL.findall(m.group(2) or ""))
                key = (m.group(1), labels)
                assert key not in self.samples, f"duplicate sample {line!r}"
                self.samples[key] = float(m.group(3))

    def families(self, prefix: str) -> set[str]:
        return {n for n in self.types if n.startswith(prefix)}

    def label_names(self, family: str) -> set[frozenset[str]]:
        return {frozenset(k for k, _ in labels) for (n, labels) in self.samples if n == family}

    def groups(self, family: str) -> set[str]:
        return {v for (n, labels) in self.samples if n == family for k, v in labels if k == "groupname"}

    def value(self, family: str, **labels: str) -> float:
        return self.samples[(family, frozenset(labels.items()))]

    def by_group(self, family: str, **extra: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, labels), v in self.samples.items():
            d = dict(labels)
            if n == family and all(d.get(k) == val for k, val in extra.items()) and len(d) == 1 + len(extra):
                out[d["groupname"]] = v
        return out


def scrape(url: str, headers: dict[str, str] | None = None) -> Exposition:
    status, body, hdrs = http_get(url, headers)
    assert status == 200, (status, body[:200])
    return Exposition(body.decode())


# -- in-process: the collector and the exposition -----------------------------------------


def group(procs: int, cpu: float = 0.0, start: float = 0.0) -> GroupCounts:
    return GroupCounts(
        procs=procs,
        counts=Counts(cpu, cpu / 2, 100, 200, 1, 2, 3, 4),
        memory=Memory(4096, 8192, 512),
        open_fds=7,
        worst_fd_ratio=0.25,
        num_threads=3,
        states=States(1, 2, 0, 0, 0),
        oldest_start_time=start,
    )


def test_names_types_and_labels_are_process_exporters() -> None:
    collector = MetricsCollector(poll_status=PollStatus(interval=1.0, started_at=0.0))
    collector.on_poll(GrouperUpdate(time=10.0), {'we"ird\\name': group(2, 1.5, 1700000000.75)}, 0.004)
    text = render(make_registry(collector, process=False)).decode()
    exp = Exposition(text)
    ng = "namedprocess_namegroup_"
    assert {n: t for n, t in exp.types.items() if n.startswith("namedprocess_")} == {
        **{ng + f: "gauge" for f in ("num_procs", "memory_bytes", "open_filedesc", "worst_fd_ratio",
                                     "oldest_start_time_seconds", "num_threads", "states")},
        **{ng + f: "counter" for f in ("cpu_seconds_total", "read_bytes_total", "write_bytes_total",
                                       "major_page_faults_total", "minor_page_faults_total",
                                       "context_switches_total")},
        # process-exporter's counters without _total keep their names and their TYPE
        "namedprocess_scrape_errors": "counter",
        "namedprocess_scrape_procread_errors": "counter",
        "namedprocess_scrape_partial_errors": "counter",
    }
    name = 'we\\"ird\\\\name'  # as escaped in the exposition
    assert exp.value(ng + "cpu_seconds_total", groupname=name, mode="user") == 1.5
    assert exp.value(ng + "cpu_seconds_total", groupname=name, mode="system") == 0.75
    assert exp.value(ng + "context_switches_total", groupname=name, ctxswitchtype="nonvoluntary") == 4
    assert exp.value(ng + "memory_bytes", groupname=name, memtype="swapped") == 512
    assert exp.value(ng + "states", groupname=name, state="Sleeping") == 2
    # whole seconds, like Go's Time.Unix()
    assert exp.value(ng + "oldest_start_time_seconds", groupname=name) == 1700000000
    assert exp.value("namedprocess_scrape_errors") == 0
    assert "namedprocess_scrape_errors_total" not in text


@pytest.mark.parametrize("start", [1700000000.75, 1700000029.9996, 1700000029.0004, 1700000030.0])
def test_oldest_start_time_is_the_same_instant_in_metrics_and_events(start: float) -> None:
    collector = MetricsCollector()
    collector.on_poll(GrouperUpdate(time=10.0), {"g": group(1, 0.0, start)}, 0.001)
    exp = Exposition(render(make_registry(collector, process=False)).decode())
    whole = exp.value("namedprocess_namegroup_oldest_start_time_seconds", groupname="g")
    in_events = group_fields("g", group(1, 0.0, start))["oldest_start_time"]
    # both truncate: to the second, to the millisecond; never rounded up past the start
    assert whole == math.floor(in_events) <= in_events <= start
    assert start - in_events < 0.001


def test_poll_view_accumulates_errors_and_the_duration_histogram() -> None:
    status = PollStatus(interval=1.0, started_at=0.0)
    collector = MetricsCollector(poll_status=status, hub_stats=HubStats())
    durations = [0.0005, 0.001, 0.003, 0.2, 30.0]
    for i, d in enumerate(durations):
        update = GrouperUpdate(time=100.0 + i, errors=CollectErrors(read=1, partial=2, permission=i), tracked=5)
        collector.on_poll(update, {"g": group(1)}, d)
    status.failures = 3
    exp = Exposition(render(make_registry(collector, process=False)).decode())
    assert exp.value("namedprocess_scrape_procread_errors") == 5
    assert exp.value("namedprocess_scrape_partial_errors") == 10
    assert exp.value("namedprocess_scrape_errors") == 3
    assert exp.value("procstream_poll_permission_errors_total") == 0 + 1 + 2 + 3 + 4
    assert exp.value("procstream_last_poll_timestamp_seconds") == 104.0
    h = "procstream_poll_duration_seconds"
    assert exp.value(h + "_count") == 5
    assert exp.value(h + "_sum") == pytest.approx(sum(durations))
    # a bucket counts observations <= its bound (0.001 is inside le="0.001")
    assert exp.value(h + "_bucket", le="0.001") == 2
    assert exp.value(h + "_bucket", le="0.005") == 3
    assert exp.value(h + "_bucket", le="0.25") == 4
    assert exp.value(h + "_bucket", le=repr(POLL_DURATION_BUCKETS[-1])) == 4
    assert exp.value(h + "_bucket", le="+Inf") == 5


def test_a_scrape_reads_a_published_view_and_never_a_half_built_one() -> None:
    collector = MetricsCollector()
    first = {"a": group(1)}
    collector.on_poll(GrouperUpdate(time=1.0), first, 0.01)
    view = collector.view
    collector.on_poll(GrouperUpdate(time=2.0), {"a": group(2), "b": group(1)}, 0.01)
    # The old view is untouched by the new poll: a scrape holding it stays consistent.
    assert view.groups is first and view.time == 1.0 and view.duration_count == 1
    assert set(collector.view.groups) == {"a", "b"} and collector.view.duration_count == 2


# -- real servers -------------------------------------------------------------------------

WORKER = r"""
import os, subprocess, sys, threading, time
end = time.process_time() + 0.15
while time.process_time() < end:  # some CPU of its own
    pass
path = sys.argv[1]
with open(path, "wb") as f:  # some I/O
    f.write(os.urandom(256 * 1024))
    f.flush()
    os.fsync(f.fileno())
with open(path, "rb") as f:
    f.read()
held = [open(path, "rb") for _ in range(5)]  # open fds
ev = threading.Event()
for _ in range(3):
    threading.Thread(target=ev.wait, daemon=True).start()
child = subprocess.Popen(["sleep", "600"])  # joins this group (children tracking)
print("ready", flush=True)
sys.stdin.read()
child.kill()
"""


@pytest.fixture
def tag() -> str:
    return secrets.token_hex(3)


@pytest.fixture
def exporter(tmp_path: Path, tag: str) -> Iterator[tuple[str, Path, float]]:
    """process-exporter on a free loopback port, with a config naming this test's processes."""
    config = tmp_path / "config.yml"
    config.write_text(
        "process_names:\n"
        f"  - comm: [pxa_{tag}]\n"
        f"  - name: \"gone-{{{{.Comm}}}}\"\n    comm: [pxc_{tag}]\n"
        f"  - name: \"work:{{{{.Matches.Tag}}}}\"\n    cmdline: ['pxm-(?P<Tag>{tag})']\n"
    )
    launched = time.time()
    with running_exporter(config, "-threads=false", "-gather-smaps=false") as url:
        yield url, config, launched


def test_metrics_agree_with_process_exporter(tmp_path: Path, tag: str, exporter: tuple[str, Path, float]) -> None:
    their_url, config, launched = exporter
    with Served("--config", str(config), "--interval", "0.2", "--source", "poll", log=tmp_path / "log") as srv:
        our_url = srv.url + "/metrics"
        # Processes start after both exporters' first reading, so both count all their
        # usage. process-exporter decides "started after my first reading" from start
        # times built on /proc/stat's whole-second btime: leave it 2 s of margin.
        wait_for("2 s past process-exporter's start", lambda: time.time() > launched + 2.0, timeout=5)
        procs: list[subprocess.Popen] = []
        try:
            for name, count in ((f"pxa_{tag}", 2), (f"pxc_{tag}", 1)):
                exe = tmp_path / name
                shutil.copy("/bin/sleep", exe)
                procs += [subprocess.Popen([str(exe), "600"]) for _ in range(count)]
            gone = procs[-1]
            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(tmp_path / "data"), f"pxm-{tag}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
            )
            procs.append(worker)
            assert worker.stdout is not None and worker.stdout.readline() == b"ready\n"

            expected = {f"pxa_{tag}": 2.0, f"gone-pxc_{tag}": 1.0, f"work:{tag}": 2.0}
            np = "namedprocess_namegroup_num_procs"
            wait_for("process-exporter to see the processes", lambda: scrape(their_url).by_group(np) == expected,
                     explain=lambda: scrape(their_url).by_group(np))
            wait_for("procstream to see the processes", lambda: scrape(our_url).by_group(np) == expected,
                     explain=lambda: scrape(our_url).by_group(np))
            stop(gone)  # a group that existed stays, empty, in both
            expected[f"gone-pxc_{tag}"] = 0.0
            wait_for("process-exporter to see the exit", lambda: scrape(their_url).by_group(np) == expected)
            wait_for("procstream to see the exit", lambda: scrape(our_url).by_group(np) == expected)
            # Everything is idle now; two more polls so our latest poll is as late as theirs.
            polls = scrape(our_url).value("procstream_polls_total")
            wait_for("two more polls", lambda: scrape(our_url).value("procstream_polls_total") >= polls + 2)
            theirs, ours = scrape(their_url), scrape(our_url)
        finally:
            for p in procs:
                stop(p, group=p is procs[-1])

    ng = "namedprocess_namegroup_"
    # Same families (but for the per-thread wait channels we don't read), same TYPEs.
    their_families = theirs.families("namedprocess_") - {ng + "threads_wchan"}
    assert ours.families("namedprocess_") == their_families
    for family in their_families:
        assert ours.types[family] == theirs.types[family], family
        assert ours.label_names(family) == theirs.label_names(family), family
        if family.startswith(ng):
            assert ours.groups(family) == theirs.groups(family) == set(expected), family

    # Gauges: exact where stable.
    for family in ("num_procs", "num_threads", "open_filedesc", "worst_fd_ratio"):
        assert ours.by_group(ng + family) == theirs.by_group(ng + family), family
    # Thread states: process-exporter adds every thread's state (task/*/stat) on top of
    # the process's own (stat) for a multi-threaded process, so it counts the main thread
    # twice (proc/tracker.go, "metrics.States.Add(thread.States)"); we count each thread
    # once. Single-threaded groups agree exactly; the worker (one multi-threaded process,
    # all asleep) differs by exactly that one main thread.
    for state in ("Running", "Sleeping", "Waiting", "Zombie", "Other"):
        o = ours.by_group(ng + "states", state=state)
        t = theirs.by_group(ng + "states", state=state)
        double = 1.0 if state == "Sleeping" else 0.0
        assert o == {**t, f"work:{tag}": t[f"work:{tag}"] - double}, state
    assert sum(ours.value(ng + "states", groupname=f"work:{tag}", state=s)
               for s in ("Running", "Sleeping", "Waiting", "Zombie", "Other")) == 5
    assert ours.by_group(ng + "num_threads")[f"work:{tag}"] == 5  # 4 + the child sleep
    for memtype in ("resident", "virtual", "swapped"):
        o, t = ours.by_group(ng + "memory_bytes", memtype=memtype), theirs.by_group(ng + "memory_bytes", memtype=memtype)
        assert o.keys() == t.keys()
        for g in o:
            assert o[g] == pytest.approx(t[g], rel=0.02, abs=64 * 1024), (memtype, g)
    oldest_o, oldest_t = ours.by_group(ng + "oldest_start_time_seconds"), theirs.by_group(ng + "oldest_start_time_seconds")
    for g in (f"pxa_{tag}", f"work:{tag}"):
        assert abs(oldest_o[g] - oldest_t[g]) <= 1, g
        assert abs(oldest_o[g] - time.time()) < 120, g

    # Counters: close (both started counting before these processes existed).
    for g in (f"pxa_{tag}", f"work:{tag}"):
        for mode in ("user", "system"):
            o = ours.value(ng + "cpu_seconds_total", groupname=g, mode=mode)
            t = theirs.value(ng + "cpu_seconds_total", groupname=g, mode=mode)
            assert o == pytest.approx(t, abs=0.03), (g, mode)
        for family in ("read_bytes_total", "write_bytes_total", "major_page_faults_total", "minor_page_faults_total"):
            o, t = ours.value(ng + family, groupname=g), theirs.value(ng + family, groupname=g)
            assert o == pytest.approx(t, rel=0.05, abs=64), (g, family)
        for kind in ("voluntary", "nonvoluntary"):
            o = ours.value(ng + "context_switches_total", groupname=g, ctxswitchtype=kind)
            t = theirs.value(ng + "context_switches_total", groupname=g, ctxswitchtype=kind)
            assert o == pytest.approx(t, rel=0.1, abs=5), (g, kind)
    cpu = ours.value(ng + "cpu_seconds_total", groupname=f"work:{tag}", mode="user")
    cpu += ours.value(ng + "cpu_seconds_total", groupname=f"work:{tag}", mode="system")
    assert cpu >= 0.14  # the worker's busy loop is counted, not just what followed


def test_a_scrape_never_scans_proc(tmp_path: Path, tag: str) -> None:
    exe = tmp_path / f"pxs_{tag}"
    shutil.copy("/bin/sleep", exe)
    # One poll at start-up, the next one a minute later: every scrape in between must
    # show the state of that first poll.
    with Served("--interval", "60", "--source", "poll", log=tmp_path / "log") as srv:
        first = scrape(srv.url + "/metrics")
        assert first.value("procstream_polls_total") == 1
        with running(str(exe), "600") as p:
            wait_for("the process to exist", lambda: Path(f"/proc/{p.pid}/stat").exists())
            for _ in range(20):
                exp = scrape(srv.url + "/metrics")
                assert exp.value("procstream_polls_total") == 1
                assert exp.value("procstream_last_poll_timestamp_seconds") == first.value(
                    "procstream_last_poll_timestamp_seconds"
                )
                assert f"pxs_{tag}" not in exp.groups("namedprocess_namegroup_num_procs")
            status, body, _ = http_get(srv.url + "/healthz")
            assert status == 200 and b'"polls":1' in body.replace(b" ", b"")


async def test_self_metrics_follow_the_stream_and_the_event_log(tmp_path: Path, tag: str) -> None:
    exe = tmp_path / f"pxl_{tag}"
    shutil.copy("/bin/sleep", exe)
    log = tmp_path / "events.ndjson"
    with Served("--interval", "0.2", "--source", "poll", "--event-log", str(log), log=tmp_path / "log") as srv:
        url = srv.url + "/metrics"
        status, body, headers = http_get(url)
        assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
        c = await Client.connect(srv.ws + "?types=proc.*")
        try:
            await c.wait("snapshot", lambda: c.of("snapshot"))
            wait_for("one subscriber", lambda: scrape(url).value("procstream_subscribers") == 1)
            with running(str(exe), "600") as p:
                await c.wait("its start", lambda: c.of("proc.start", pid=p.pid))
            await c.wait("its exit", lambda: c.of("proc.exit", pid=p.pid))
            exp = wait_for(
                "the event log to count both",
                lambda: (e := scrape(url)).value("procstream_event_log_written_total") >= 2 and e,
            )
            for typ in ("proc.start", "proc.exit", "group.update", "cycle"):
                assert exp.value("procstream_events_published_total", type=typ) >= 1, typ
            assert exp.value("procstream_event_log_write_errors_total") == 0
            assert exp.value("procstream_subscribers_attached_total") == 1
            assert exp.value("procstream_frames_sent_total") >= 3
            assert exp.value("procstream_event_source", source="poll") == 1
            polls = exp.value("procstream_polls_total")
            count = exp.value("procstream_poll_duration_seconds_count")
            # every good poll is observed (the collector sees it just before the counter)
            assert polls <= count <= polls + 1
            assert exp.value("procstream_poll_duration_seconds_bucket", le="+Inf") == count
            assert exp.value("procstream_groups") >= 1 and exp.value("procstream_tracked_procs") >= 1
            assert exp.value("procstream_build_info", version=__version__,
                             python_version=sys.version.split()[0], implementation="CPython") == 1
            assert exp.value("process_open_fds") > 0  # our own process, from /proc/self
        finally:
            await c.close()
        wait_for("the subscriber to be gone", lambda: scrape(url).value("procstream_subscribers") == 0)
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and r.read() == b"" and int(r.headers["Content-Length"]) > 1000
