"""process-exporter's optional families (``--threads``, ``--gather-smaps``,
``--threads-wchan``): in-process, and against Debian's ``prometheus-process-exporter`` run
with its defaults (``-threads -gather-smaps``) on the same live processes, whose threads
carry names of their own (``prctl(PR_SET_NAME)``, what ``pthread_setname_np`` does)."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procstream.grouper import GroupCounts, GrouperUpdate
from procstream.procfs.models import States
from procstream.serve.metrics import Families, MetricsCollector, make_registry, render
from procstream.threadgroups import ThreadCounts
from procstream.tracker import Counts, Memory
from tests.serve.test_metrics import Exposition, scrape
from tests.support.exporter import running_exporter
from tests.support.processes import stop
from tests.support.served import Served
from tests.support.waiting import wait_for

NG = "namedprocess_namegroup_"
THREAD_FAMILIES = {
    NG + "thread_count": "gauge",
    NG + "thread_cpu_seconds_total": "counter",
    NG + "thread_io_bytes_total": "counter",
    NG + "thread_major_page_faults_total": "counter",
    NG + "thread_minor_page_faults_total": "counter",
    NG + "thread_context_switches_total": "counter",
}


# -- in-process ---------------------------------------------------------------------------


def busy_group() -> GroupCounts:
    return GroupCounts(
        procs=2,
        counts=Counts(1.0, 0.5),
        memory=Memory(4096, 8192, 512, 3000, 100),
        num_threads=5,
        states=States(sleeping=5),
        threads=(
            ThreadCounts("main", 2, Counts(0.5, 0.25, 10, 20, 1, 2, 3, 4)),
            ThreadCounts('we"ird', 3, Counts(0.25, 0.0, 0, 4096, 0, 7, 9, 1)),
        ),
        wchans=(("do_epoll_wait", 2), ("futex_wait_queue", 3)),
    )


def exposition(families: Families, groups: dict[str, GroupCounts]) -> Exposition:
    collector = MetricsCollector(families=families)
    collector.on_poll(GrouperUpdate(time=1.0), groups, 0.001)
    return Exposition(render(make_registry(collector, process=False)).decode())


def test_optional_families_only_when_asked() -> None:
    exp = exposition(Families(), {"g": busy_group()})
    assert not exp.families(NG + "thread")
    assert {dict(labels)["memtype"] for (n, labels) in exp.samples if n == NG + "memory_bytes"} == {
        "resident", "virtual", "swapped"
    }


def test_thread_families_names_labels_and_values() -> None:
    exp = exposition(Families(threads=True), {"g": busy_group(), "empty": GroupCounts(procs=0, counts=Counts())})
    assert {n: t for n, t in exp.types.items() if n.startswith(NG + "thread")} == THREAD_FAMILIES
    assert exp.label_names(NG + "thread_cpu_seconds_total") == {frozenset({"groupname", "threadname", "mode"})}
    assert exp.label_names(NG + "thread_io_bytes_total") == {frozenset({"groupname", "threadname", "iomode"})}
    assert exp.label_names(NG + "thread_context_switches_total") == {
        frozenset({"groupname", "threadname", "ctxswitchtype"})
    }
    assert exp.value(NG + "thread_count", groupname="g", threadname="main") == 2
    assert exp.value(NG + "thread_count", groupname="g", threadname='we\\"ird') == 3
    assert exp.value(NG + "thread_cpu_seconds_total", groupname="g", threadname="main", mode="system") == 0.25
    assert exp.value(NG + "thread_io_bytes_total", groupname="g", threadname='we\\"ird', iomode="write") == 4096
    assert exp.value(NG + "thread_major_page_faults_total", groupname="g", threadname="main") == 1
    assert exp.value(NG + "thread_minor_page_faults_total", groupname="g", threadname='we\\"ird') == 7
    assert exp.value(
        NG + "thread_context_switches_total", groupname="g", threadname="main", ctxswitchtype="nonvoluntary"
    ) == 4
    assert exp.groups(NG + "thread_count") == {"g"}  # an empty group has no threads


def test_proportional_memory_for_every_group() -> None:
    exp = exposition(Families(smaps=True), {"g": busy_group(), "empty": GroupCounts(procs=0, counts=Counts())})
    assert exp.value(NG + "memory_bytes", groupname="g", memtype="proportionalResident") == 3000
    assert exp.value(NG + "memory_bytes", groupname="g", memtype="proportionalSwapped") == 100
    # like process-exporter, an empty group reports 0 rather than nothing
    assert exp.value(NG + "memory_bytes", groupname="empty", memtype="proportionalResident") == 0


def test_threads_by_wait_channel() -> None:
    exp = exposition(Families(wchan=True), {"g": busy_group()})
    assert exp.types[NG + "threads_wchan"] == "gauge"
    assert exp.value(NG + "threads_wchan", groupname="g", wchan="futex_wait_queue") == 3
    assert exp.value(NG + "threads_wchan", groupname="g", wchan="do_epoll_wait") == 2


# -- against process-exporter ---------------------------------------------------------------

# A process of named threads. argv: data file, tag, number of idle threads, and "busy"
# for one more thread that works (CPU, storage I/O, page faults) once told "go" on stdin.
WORKLOAD = r"""
import ctypes, os, sys, threading, time

libc = ctypes.CDLL(None, use_errno=True)

def rename(name):  # this thread's comm, as pthread_setname_np sets it
    assert libc.prctl(15, name.encode(), 0, 0, 0) == 0  # PR_SET_NAME

path, tag, idle, busy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "busy"
go, done, forever = threading.Event(), threading.Event(), threading.Event()
ready = threading.Barrier(idle + busy + 2)

def idler():
    rename("pxt-idle")
    ready.wait()
    forever.wait()

def sleeper():
    rename("pxt sleep)")  # a space and a ')' in a label value
    ready.wait()
    time.sleep(3600)

def worker():
    rename("pxt-busy")
    ready.wait()
    go.wait()
    end = time.thread_time() + 0.3
    while time.thread_time() < end:
        pass
    block = bytearray(8 * 1024 * 1024)  # minor faults
    for i in range(0, len(block), 4096):
        block[i] = 1
    with open(path, "wb") as f:
        f.write(os.urandom(256 * 1024))
        f.flush()
        os.fsync(f.fileno())
    done.set()
    forever.wait()

for target in [idler] * idle + [worker] * busy + [sleeper]:
    threading.Thread(target=target, daemon=True).start()
ready.wait()
print("ready", flush=True)
if sys.stdin.readline() == "go\n":
    go.set()
    if busy:
        done.wait()
    print("done", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def tag() -> str:
    return secrets.token_hex(3)


@pytest.fixture
def exporter_defaults(tmp_path: Path, tag: str) -> Iterator[tuple[str, Path]]:
    """process-exporter with Debian's defaults (-threads, -gather-smaps on)."""
    config = tmp_path / "config.yml"
    config.write_text(
        "process_names:\n"
        f"  - name: \"thr:{{{{.Matches.Tag}}}}\"\n    cmdline: ['pxt-(?P<Tag>{tag})']\n"
    )
    with running_exporter(config) as url:
        yield url, config


def by_thread(exp: Exposition, family: str, **extra: str) -> dict[tuple[str, str], float]:
    """(groupname, threadname) -> value, for the samples with exactly ``extra`` besides."""
    out: dict[tuple[str, str], float] = {}
    for (name, labels), value in exp.samples.items():
        d = dict(labels)
        if name == family and len(d) == 2 + len(extra) and all(d.get(k) == v for k, v in extra.items()):
            out[(d["groupname"], d["threadname"])] = value
    return out


def wchans(exp: Exposition, group: str) -> dict[str, float]:
    return {
        dict(labels)["wchan"]: value
        for (name, labels), value in exp.samples.items()
        if name == NG + "threads_wchan" and dict(labels)["groupname"] == group
    }


def test_thread_and_smaps_families_agree_with_process_exporter(
    tmp_path: Path, tag: str, exporter_defaults: tuple[str, Path]
) -> None:
    their_url, config = exporter_defaults
    group = f"thr:{tag}"
    args = ("--config", str(config), "--interval", "0.2", "--source", "poll")
    with Served(*args, "--threads", "--gather-smaps", "--threads-wchan", log=tmp_path / "log") as srv:
        our_url = srv.url + "/metrics"
        procs: list[subprocess.Popen] = []
        try:
            # 4 idle + busy + sleeper + main = 7 threads; 2 idle + sleeper + main = 4; and
            # a single-threaded process of the same group, which has no per-thread data
            for idle, busy in ((4, "busy"), (2, "lazy")):
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", WORKLOAD, str(tmp_path / f"data{idle}"), f"pxt-{tag}", str(idle), busy],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                ))
            procs.append(subprocess.Popen(
                [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()", f"pxt-{tag}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            ))
            for p in procs:
                assert p.stdout is not None and p.stdout.readline() == b"ready\n"

            # Both have read every thread once: from here on, what threads use counts.
            count = NG + "thread_count"
            expected = {(group, "pxt-idle"): 6.0, (group, "pxt sleep)"): 2.0, (group, "pxt-busy"): 1.0}
            main_name = Path(f"/proc/{procs[0].pid}/comm").read_text().strip()
            expected[(group, main_name)] = 2.0  # the single-threaded process is not counted
            wait_for("process-exporter to see the threads", lambda: by_thread(scrape(their_url), count) == expected,
                     explain=lambda: by_thread(scrape(their_url), count))
            wait_for("procstream to see the threads", lambda: by_thread(scrape(our_url), count) == expected,
                     explain=lambda: by_thread(scrape(our_url), count))
            # Each began counting at its own first look, while the processes were starting:
            # what the threads do from here on is what both must count alike.
            polls = scrape(our_url).value("procstream_polls_total")
            wait_for("two more polls", lambda: scrape(our_url).value("procstream_polls_total") >= polls + 2)
            their_base, our_base = scrape(their_url), scrape(our_url)

            for p in procs[:2]:
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write(b"go\n")
                p.stdin.flush()
                assert p.stdout.readline() == b"done\n"
            polls = scrape(our_url).value("procstream_polls_total")
            wait_for("two more polls", lambda: scrape(our_url).value("procstream_polls_total") >= polls + 2)
            theirs, ours = scrape(their_url), scrape(our_url)
        finally:
            for p in procs:
                stop(p)

    # the same families, types and label names
    for family, typ in {**THREAD_FAMILIES, NG + "threads_wchan": "gauge", NG + "memory_bytes": "gauge"}.items():
        assert ours.types.get(family) == theirs.types[family] == typ, family
        assert ours.label_names(family) == theirs.label_names(family), family
    assert by_thread(ours, count) == by_thread(theirs, count) == expected

    def grown(after: Exposition, before: Exposition, family: str, **extra: str) -> dict[tuple[str, str], float]:
        """What each (group, thread name) counter of ``family`` grew by in between."""
        base = by_thread(before, NG + family, **extra)
        return {k: v - base.get(k, 0.0) for k, v in by_thread(after, NG + family, **extra).items()}

    # counters: what the threads did between the two readings (the work, and what little
    # the idle ones do), counted alike
    for mode in ("user", "system"):
        o = grown(ours, our_base, "thread_cpu_seconds_total", mode=mode)
        t = grown(theirs, their_base, "thread_cpu_seconds_total", mode=mode)
        assert o.keys() == t.keys() == expected.keys()
        for key in o:
            assert o[key] == pytest.approx(t[key], abs=0.03), (mode, key)
    busy_cpu = sum(grown(ours, our_base, "thread_cpu_seconds_total", mode=m)[(group, "pxt-busy")] for m in ("user", "system"))
    assert busy_cpu >= 0.25
    for iomode in ("read", "write"):
        o = grown(ours, our_base, "thread_io_bytes_total", iomode=iomode)
        t = grown(theirs, their_base, "thread_io_bytes_total", iomode=iomode)
        for key in o:
            assert o[key] == pytest.approx(t[key], rel=0.05, abs=4096), (iomode, key)
    assert by_thread(ours, NG + "thread_io_bytes_total", iomode="write")[(group, "pxt-busy")] >= 256 * 1024
    for family in ("thread_minor_page_faults_total", "thread_major_page_faults_total"):
        o, t = grown(ours, our_base, family), grown(theirs, their_base, family)
        for key in o:
            assert o[key] == pytest.approx(t[key], rel=0.05, abs=16), (family, key)
    assert grown(ours, our_base, "thread_minor_page_faults_total")[(group, "pxt-busy")] >= 1000
    for kind in ("voluntary", "nonvoluntary"):
        o = grown(ours, our_base, "thread_context_switches_total", ctxswitchtype=kind)
        t = grown(theirs, their_base, "thread_context_switches_total", ctxswitchtype=kind)
        for key in o:
            assert o[key] == pytest.approx(t[key], rel=0.1, abs=5), (kind, key)

    # proportional memory: the same pages shared by the same processes
    for memtype in ("proportionalResident", "proportionalSwapped"):
        o = ours.value(NG + "memory_bytes", groupname=group, memtype=memtype)
        t = theirs.value(NG + "memory_bytes", groupname=group, memtype=memtype)
        assert o == pytest.approx(t, rel=0.05, abs=256 * 1024), memtype
    assert ours.value(NG + "memory_bytes", groupname=group, memtype="proportionalResident") > 8 * 1024 * 1024

    # wait channels: process-exporter counts a multi-threaded process's main thread twice
    # (its /proc/PID/wchan, then task/PID/wchan again); we count each thread once
    o, t = wchans(ours, group), wchans(theirs, group)
    assert sum(o.values()) == 7 + 4 + 1
    assert sum(t.values()) - sum(o.values()) == 2
    for channel in o.keys() | t.keys():
        assert 0 <= t.get(channel, 0) - o.get(channel, 0) <= 2, channel
