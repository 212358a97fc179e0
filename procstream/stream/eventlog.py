"""NDJSON event log for log shippers (``--event-log FILE|-``).

One JSON object per line, the events exactly as sent on the wire (with ``seq`` and
``host``), only the selected types (by default ``proc.start``, ``proc.exit`` and the
group lifecycle events: ``group.missing``, ``group.recovered``, ``group.crashloop``,
``group.stable``). Vector,
Fluent Bit, Filebeat or Promtail tail the file; ``-`` writes to standard output.

Threading: ``write()`` is called on the asyncio event loop after every poll and must never
block it. It filters and encodes the batch (orjson, microseconds per event), appends the
lines to a bounded in-memory queue under a lock held only for the append, and returns. A
dedicated writer thread does all the I/O. When the queue is full — in events or in
bytes — (the sink is stuck: NFS hang, a FIFO nobody reads, a full pipe to stdout), the
events that don't fit are dropped and counted in ``dropped``; memory never grows past
the bound.

The writer:

- appends with ``O_APPEND`` and one ``write`` per batch, so a batch reaches the kernel
  before the next poll; lines are never split across files or interleaved;
- rotates by size like ``logging.handlers.RotatingFileHandler`` (``path`` → ``path.1`` →
  ... → ``path.N``, the oldest dropped) *between* lines: a file exceeds ``max_bytes`` only
  when a single line is larger than ``max_bytes``;
- reopens the path on ``reopen()`` (SIGHUP after logrotate has moved the file), and by
  itself when the path no longer names the open file (moved, deleted, its directory
  removed or replaced) — the check is one ``stat`` per batch;
- on a failure (disk full, permissions, directory gone) counts it in ``write_errors``,
  counts the batch's events in ``dropped``, logs one warning per failure streak (again
  only if the error changes), keeps running, and retries opening the file with the next
  batch; when writing works again it logs how many events were lost. A line left half
  written by a failure is ended with a newline before the next line, so a shipper sees
  one bad line, never two glued ones.

Counters for ``/metrics``: :class:`EventLogStats`.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from ..schema import EXPLICIT_TYPES, GROUP_CRASHLOOP, GROUP_MISSING, GROUP_RECOVERED, GROUP_STABLE, PROC_EXIT, PROC_START
from ..stats import Stats

__all__ = ["EventLog", "EventLogStats", "DEFAULT_TYPES", "parse_types"]

log = logging.getLogger(__name__)

#: Event types written when none are chosen: what a log shipper wants by default (the
#: lifecycle events are few, and each one is news).
DEFAULT_TYPES: frozenset[str] = frozenset(
    {PROC_START, PROC_EXIT, GROUP_MISSING, GROUP_RECOVERED, GROUP_CRASHLOOP, GROUP_STABLE}
)

_STDOUT = "-"
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
# Event logs hold command lines (redacted, but still): not world-readable.
_FILE_MODE = 0o640
# What a sink may raise: OSError for files and pipes; ValueError for a closed stdout.
_SINK_ERRORS = (OSError, ValueError)


def parse_types(text: str) -> frozenset[str]:
    """``"proc.start,proc.exit"`` → the set ``EventLog(types=...)`` takes (for the CLI's
    ``--event-log-types``). ``proc.*`` selects a family, ``*`` every type."""
    types = frozenset(t.strip() for t in text.split(",") if t.strip())
    _check_types(types)
    return types


def _check_types(types: Iterable[str]) -> None:
    names = list(types)
    if not names:
        raise ValueError("event log types: none given")
    for name in names:
        plain = "*" not in name
        family = name.endswith(".*") and "*" not in name[:-2] and len(name) > 2
        if not (name == "*" or (name and plain) or family):
            raise ValueError(f"event log types: bad type {name!r} (use names like proc.start or proc.*)")


class _Streak:
    """Log a failure once per streak (and again if the error changes), and the recovery."""

    __slots__ = ("what", "key", "errors", "lost")

    def __init__(self, what: str) -> None:
        self.what = what
        self.key: tuple[str, object] | None = None
        self.errors = 0
        self.lost = 0

    def failed(self, path: str, op: str, exc: Exception, lost: int) -> None:
        key = (op, getattr(exc, "errno", None) or type(exc).__name__)
        if key != self.key:
            log.warning(
                "event log %s: %s failed: %s; %s",
                path, op, getattr(exc, "strerror", None) or exc,
                "events are dropped until it works again" if self.what == "write"
                else "the file grows past its size limit until it works again",
            )
            self.key = key
        self.errors += 1
        self.lost += lost

    def ok(self, path: str) -> None:
        if self.key is None:
            return
        if self.what == "write":
            log.warning(
                "event log %s: writing again after %d failed attempts; %d events were dropped",
                path, self.errors, self.lost,
            )
        else:
            log.warning("event log %s: rotating again after %d failed attempts", path, self.errors)
        self.key, self.errors, self.lost = None, 0, 0


@dataclass(slots=True)
class EventLogStats(Stats):
    """The event log's counters. The writer thread and the caller (the event loop) each
    count in fields of their own; ``queued`` changes under the queue's lock."""

    #: events that reached the file or stdout (writer)
    events_written: int = 0
    #: failed open/write/rotate attempts, one per batch, not per event (writer)
    write_errors: int = 0
    #: events lost to failed writes (writer)
    write_dropped: int = 0
    rotations: int = 0
    #: events not queued: queue full, or written after close (caller)
    queue_dropped: int = 0
    #: events that could not be encoded, and so were dropped (caller)
    encode_errors: int = 0
    #: events waiting for the writer thread right now, and their bytes
    queued: int = 0
    queued_bytes: int = 0

    @property
    def dropped(self) -> int:
        """Events lost: queue full, writes that failed, encoding errors, writes after close."""
        return self.write_dropped + self.queue_dropped + self.encode_errors


class EventLog:
    """Append selected events as NDJSON to ``path`` (``-`` = stdout) from a writer thread.

    Create it at start-up (the writer thread starts and opens the file at once, so a bad
    path is reported in the log right away, yet never stops the service); call ``write()``
    on the event loop after every poll; ``reopen()`` on SIGHUP; ``close()`` at shutdown.

    ``max_bytes`` 0 means no rotation; with ``backups`` 0 a full file is removed and
    started afresh. ``max_queue`` and ``max_queue_bytes`` bound the events waiting for
    the writer (on top of the batch it is writing at that moment).
    """

    def __init__(
        self,
        path: str,
        *,
        types: frozenset[str] = DEFAULT_TYPES,
        max_bytes: int = 0,
        backups: int = 5,
        max_queue: int = 10_000,
        max_queue_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if not path:
            raise ValueError("event log: empty path")
        if max_bytes < 0 or backups < 0 or max_queue < 1 or max_queue_bytes < 1:
            raise ValueError("event log: max_bytes and backups must be >= 0, max_queue(_bytes) >= 1")
        _check_types(types)
        self._path = path
        self._stdout = path == _STDOUT
        self._types = frozenset(types)
        self._all_types = "*" in self._types
        self._prefixes = tuple(t[:-1] for t in self._types if t.endswith(".*"))
        self._max_bytes = max_bytes
        self._backups = backups
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes

        # Shared between the caller and the writer, under _cond's lock.
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[list[bytes]] = deque()
        self._reopen_requested = False
        self._closing = False

        self.stats = EventLogStats()

        # The writer thread's sink.
        self._fd: int | None = None
        self._out: BinaryIO | None = None  # stdout mode
        self._regular = False
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._progress = 0  # lines of the current batch already written
        self._write_streak = _Streak("write")
        self._rotate_streak = _Streak("rotate")

        self._thread = threading.Thread(
            target=self._run, name=f"eventlog:{path}", daemon=True
        )
        self._thread.start()

    # -- public API (caller side) --------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def types(self) -> frozenset[str]:
        return self._types

    def wants(self, event_type: str) -> bool:
        """Whether events of this type are written (``proc.update`` only when named:
        ``*`` and ``proc.*`` don't select it)."""
        if event_type in self._types:
            return True
        if event_type in EXPLICIT_TYPES:
            return False
        return self._all_types or any(event_type.startswith(p) for p in self._prefixes)

    def write(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Queue the events of one poll (as sent on the wire) that this log wants.

        Call on the event loop after every poll. Never blocks on I/O and never raises for
        a sink problem: what can't be queued is counted in ``dropped``.
        """
        lines: list[bytes] = []
        for event in events:
            if not self.wants(event.get("type", "")):
                continue
            try:
                lines.append(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
            except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
                self.stats.encode_errors += 1
                if self.stats.encode_errors == 1:
                    log.warning("event log %s: event not encodable, dropped: %s", self._path, exc)
        if not lines:
            return
        with self._cond:
            if self._closing:
                self.stats.queue_dropped += len(lines)
                return
            room = self._max_queue - self.stats.queued
            room_bytes = self._max_queue_bytes - self.stats.queued_bytes
            fit = 0
            size = 0
            for line in lines[: max(room, 0)]:
                if size + len(line) > room_bytes:
                    break
                size += len(line)
                fit += 1
            if fit < len(lines):
                self.stats.queue_dropped += len(lines) - fit
                lines = lines[:fit]
                if not lines:
                    return
            self._queue.append(lines)
            self.stats.queued += len(lines)
            self.stats.queued_bytes += size
            self._cond.notify()

    def reopen(self) -> None:
        """Close and reopen the file before the next write (call on SIGHUP, after
        logrotate moved the file). Returns at once; the writer thread does the work."""
        with self._cond:
            self._reopen_requested = True
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued, close the file and stop the writer thread, waiting at
        most ``timeout`` seconds. Returns whether the thread finished (False: the sink is
        stuck; the daemon thread is abandoned and a warning logged)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "event log %s: writer still blocked after %.1fs at shutdown; %d events not written",
                self._path, timeout, self.stats.queued,
            )
            return False
        return True

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._try_open()
        while True:
            with self._cond:
                while not self._queue and not self._reopen_requested and not self._closing:
                    self._cond.wait()
                reopen = self._reopen_requested
                self._reopen_requested = False
                # Take everything waiting: one write for several polls when catching up.
                batches = list(self._queue)
                self._queue.clear()
                self.stats.queued = 0
                self.stats.queued_bytes = 0
                closing = self._closing
            if reopen:
                self._close_sink()
                if not batches:
                    self._try_open()
            if batches:
                lines = batches[0] if len(batches) == 1 else [ln for b in batches for ln in b]
                self._write_lines(lines)
            if closing:
                with self._cond:
                    if not self._queue:
                        break
        self._close_sink()

    def _try_open(self) -> None:
        """Open the sink now (at start and after reopen) so a bad path shows at once."""
        try:
            self._open()
        except _SINK_ERRORS as exc:
            self.stats.write_errors += 1
            self._write_streak.failed(self._path, "open", exc, 0)

    def _open(self) -> None:
        if self._stdout:
            out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
            self._out = out  # type: ignore[assignment]
            return
        fd = os.open(self._path, _OPEN_FLAGS, _FILE_MODE)
        try:
            st = os.fstat(fd)
            self._regular = stat.S_ISREG(st.st_mode)
            self._identity = (st.st_dev, st.st_ino)
            self._fd = fd
            if self._regular and st.st_size > 0 and not self._ends_with_newline():
                self._write_all(b"\n")  # end a line cut short by an earlier failure
        except OSError:
            self._close_sink()
            raise

    def _ends_with_newline(self) -> bool:
        try:
            with open(self._path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                return f.read(1) == b"\n"
        except OSError:
            return True  # can't tell: don't add a blank line

    def _close_sink(self) -> None:
        if self._out is not None:
            try:
                self._out.flush()
            except (OSError, ValueError):
                pass
            self._out = None
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        self._identity = None

    def _path_moved(self) -> bool:
        """Whether ``path`` no longer names the open file (moved, deleted, replaced)."""
        try:
            st = os.stat(self._path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def _write_all(self, data: bytes) -> None:
        if self._out is not None:
            self._out.write(data)
            self._out.flush()
            return
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            if n <= 0:  # a regular file never does this; be safe against a spin
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[n:]

    def _write_lines(self, lines: list[bytes]) -> None:
        self._progress = 0
        op = "open"
        try:
            if self._fd is None and self._out is None:
                self._open()
            elif self._regular and self._path_moved():
                self._close_sink()
                self._open()
            op = "write"
            if self._regular and self._max_bytes > 0:
                self._write_rotating(lines)
            else:
                self._write_all(b"".join(lines))
                self._progress = len(lines)
        except _SINK_ERRORS as exc:
            lost = len(lines) - self._progress
            self.stats.events_written += self._progress
            self.stats.write_errors += 1
            self.stats.write_dropped += lost
            self._write_streak.failed(self._path, op, exc, lost)
            # Reopen with the next batch: the path may be fixed by then.
            self._close_sink()
            return
        self.stats.events_written += self._progress
        self._write_streak.ok(self._path)

    def _write_rotating(self, lines: list[bytes]) -> None:
        """Write ``lines``, rotating between lines at the size bound; ``_progress`` counts
        the lines out so far, so a failure midway loses only the rest."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size  # fresh: copytruncate may have emptied it
        start = 0
        pending = 0
        for i, line in enumerate(lines):
            if size + pending > 0 and size + pending + len(line) > self._max_bytes:
                if i > start:
                    self._write_all(b"".join(lines[start:i]))
                    self._progress = i
                start = i
                self._rotate()
                assert self._fd is not None
                size = os.fstat(self._fd).st_size
                pending = 0
            pending += len(line)
        if start < len(lines):
            self._write_all(b"".join(lines[start:]))
        self._progress = len(lines)

    def _rotate(self) -> None:
        """``path.N-1`` → ``path.N`` ... ``path`` → ``path.1``, then a fresh ``path``. If
        the renames fail the current file is kept (growing past its limit beats losing
        events) and the failure counted; if the reopen fails, OSError propagates."""
        self._close_sink()
        try:
            if self._backups > 0:
                for i in range(self._backups - 1, 0, -1):
                    src = f"{self._path}.{i}"
                    if os.path.lexists(src):
                        os.replace(src, f"{self._path}.{i + 1}")
                os.replace(self._path, f"{self._path}.1")
            else:
                os.unlink(self._path)
        except OSError as exc:
            self.stats.write_errors += 1
            self._rotate_streak.failed(self._path, "rotate", exc, 0)
        else:
            self.stats.rotations += 1
            self._rotate_streak.ok(self._path)
        self._open()
