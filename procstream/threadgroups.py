"""Per-thread-name counters of each group: process-exporter's ``-threads`` families.

Rules (process-exporter's, so its dashboards read the same numbers):
- Only processes with two threads or more take part (``ProcExtras.threads`` is empty
  for the others), and only while they are tracked.
- A thread is identified by (tid, start time). What it used between two polls counts;
  a thread seen for the first time (also every thread of a process just tracked) counts
  nothing yet, and a thread that is gone stops counting.
- Within a group, threads are summed by name. A name's counters grow from poll to poll
  while some thread of the group has it; when none has it at a poll, its counters are
  forgotten (they start from zero if the name comes back). A group without any such
  thread has no per-thread counters at all.

Pure and synchronous: the grouper calls :meth:`ThreadGroups.update` once per poll.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .procfs.models import ProcId, ThreadSample
from .tracker import ZERO_COUNTS, Counts, TrackedProc

__all__ = ["ThreadCounts", "ThreadGroups"]


@dataclass(frozen=True, slots=True)
class ThreadCounts:
    """The threads of one group that share a name: how many there are now, and what
    they used since the name appeared in the group."""

    name: str
    threads: int
    counts: Counts


class ThreadGroups:
    """Keeps each tracked process's last thread samples and each group's counters by
    thread name."""

    def __init__(self) -> None:
        #: per process: its threads' samples at the last poll, by (tid, start time)
        self._last: dict[ProcId, dict[tuple[int, int], ThreadSample]] = {}
        #: per group: counters by thread name, as reported at the last poll
        self._totals: dict[str, dict[str, ThreadCounts]] = {}

    @property
    def active(self) -> bool:
        """True while it holds samples or counters (an update with no process clears it)."""
        return bool(self._last or self._totals)

    def update(self, tracked: Iterable[TrackedProc]) -> dict[str, tuple[ThreadCounts, ...]]:
        """One poll: ``tracked`` are the processes that have thread samples (others are
        skipped). Returns each group's counters by thread name, sorted by name; groups
        without multi-threaded processes are left out."""
        last = self._last
        seen: dict[ProcId, dict[tuple[int, int], ThreadSample]] = {}
        # group -> name -> [threads, usage this poll]
        polled: dict[str, dict[str, list]] = {}
        for tp in tracked:
            extras = tp.metrics.extras
            samples = extras.threads if extras is not None else ()
            if not samples:
                continue
            before = last.get(tp.id, {})
            now: dict[tuple[int, int], ThreadSample] = {}
            names = polled.setdefault(tp.group, {})
            for sample in samples:
                key = (sample.tid, sample.start_time_rel)
                now[key] = sample
                old = before.get(key)
                entry = names.get(sample.name)
                if entry is None:
                    entry = names[sample.name] = [0, ZERO_COUNTS]
                entry[0] += 1
                if old is not None:
                    # a sample has a process's counter fields: the same difference, never negative
                    entry[1] = entry[1] + Counts.between(old, sample)  # type: ignore[arg-type]
            seen[tp.id] = now
        self._last = seen

        totals: dict[str, dict[str, ThreadCounts]] = {}
        for group, names in polled.items():
            history = self._totals.get(group, {})
            current: dict[str, ThreadCounts] = {}
            for name, (count, usage) in names.items():
                earlier = history.get(name)
                if earlier is not None:
                    usage = earlier.counts + usage
                current[name] = ThreadCounts(name, count, usage)
            totals[group] = current
        self._totals = totals
        return {group: tuple(names[n] for n in sorted(names)) for group, names in totals.items()}
