"""What the service may hold: memory (``--max-memory``) and file descriptors.

Memory: one budget in bytes, split into the parts that grow with what clients and local
users do, each enforced where it is held:

- ``buffer``: the resume buffer (events by bytes, besides ``--buffer`` events and 15 min);
- ``clients``: every WebSocket client's pending output (queued control frames, the
  snapshot being sent, what its socket's write buffer holds);
- ``caches``: per-filter frames of recent batches, encoded snapshots and each process's
  encoded snapshot entry;
- ``event_log``: lines waiting for the event log's writer.

The rest (:meth:`MemoryBudget.parts`' ``other``) is for what does not depend on
clients: the interpreter, the state of every process and group (each event's strings are
capped), a poll's working set. On top of the parts, :class:`MemoryGuard` watches the
process's resident size: past 90 % of the budget the hub gives memory back at once
(caches, half the resume buffer, the clients holding most), and freed heap pages are
returned to the system. After a wave of connections has ended it runs the cyclic
garbage collector once: a closed websockets connection is a cycle (its parser generator
and its logger refer back to it), and on a quiet server the collector's own schedule may
not come for a long time.

Descriptors: each client holds a socket. :func:`fit_descriptors` raises the soft
``RLIMIT_NOFILE`` to what ``--max-clients`` needs plus a reserve (for polls, the event
log, kernel sockets, ``/healthz``), up to the hard limit; when even that is short, it
lowers the number of clients instead, so that the reserve is never used up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "MIN_MAX_MEMORY",
    "FD_RESERVE",
    "MemoryBudget",
    "Descriptors",
    "parse_size",
    "fit_descriptors",
    "resident_bytes",
    "MemoryGuard",
]

log = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
DEFAULT_MAX_MEMORY: Final = 256 * MIB
MIN_MAX_MEMORY: Final = 64 * MIB
#: Descriptors kept for everything but clients' sockets: the poll (a directory and a
#: file at a time), the event log, kernel event sockets, the event loop's own, standard
#: streams, worker threads reading files (the viewer's, /metrics), TLS files on reload.
FD_RESERVE: Final = 64

_SIZE: Final = re.compile(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", re.I)
_UNITS: Final = {"": 1, "k": 1024, "m": MIB, "g": 1024 * MIB, "t": 1024 * 1024 * MIB}


def parse_size(text: str) -> int:
    """``"256M"``, ``"1G"``, ``"512MiB"``, ``"1048576"`` → bytes (powers of 1024);
    ``ValueError`` otherwise."""
    m = _SIZE.fullmatch(text) if text.isascii() else None
    if m is None:
        raise ValueError(f"{text!r} is not a size like 256M, 1G or 268435456")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """``--max-memory`` and its parts (see the module notes)."""

    total: int

    @property
    def buffer(self) -> int:
        return self.total // 4

    @property
    def clients(self) -> int:
        return self.total // 4

    @property
    def caches(self) -> int:
        return self.total // 8

    @property
    def event_log(self) -> int:
        return self.total // 16

    def parts(self) -> dict[str, int]:
        """Every part by name; ``other`` is what is left for the rest of the process."""
        parts = {"buffer": self.buffer, "clients": self.clients, "caches": self.caches,
                 "event_log": self.event_log}
        parts["other"] = self.total - sum(parts.values())
        return parts


@dataclass(frozen=True, slots=True)
class Descriptors:
    """How :func:`fit_descriptors` left the limit: the soft limit now, the clients it
    allows, and what to log about it (None: nothing changed)."""

    soft: int
    max_clients: int
    message: str | None
    lowered: bool


def fit_descriptors(max_clients: int, per_client_extra: int) -> Descriptors:
    """Make the soft ``RLIMIT_NOFILE`` cover ``max_clients`` sockets plus
    ``per_client_extra`` (sockets of plain HTTP requests and handshakes, and one accept
    round) plus :data:`FD_RESERVE`, raising it up to the hard limit; if the hard limit is
    lower, lower the clients instead."""
    need = max_clients + per_client_extra + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return Descriptors(soft, max_clients, None, False)
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    raised = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            raised = target
        except (ValueError, OSError):
            pass
    if raised >= need:
        return Descriptors(raised, max_clients,
                           f"raised the soft descriptor limit from {soft} to {raised} for "
                           f"--max-clients {max_clients}", False)
    fitting = max(1, raised - per_client_extra - FD_RESERVE)
    return Descriptors(
        raised, fitting,
        f"the descriptor limit ({raised}, hard {hard if hard != resource.RLIM_INFINITY else 'unlimited'}) "
        f"is too low for --max-clients {max_clients} (it needs {need}): accepting "
        f"{fitting} WebSocket clients; raise LimitNOFILE= (systemd) or ulimits nofile "
        "(containers) to allow more",
        True,
    )


_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``), 0 if unknown."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fields = os.read(fd, 256).split()
        finally:
            os.close(fd)
        return int(fields[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``: give free heap pages back to the system (Python frees
    objects to malloc, which keeps the pages otherwise). A no-op elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def give_back() -> None:
        trim(0)

    return give_back


class MemoryGuard:
    """Call :meth:`check` every second or so: it gives memory back when the process
    nears ``budget`` (``shed``, then the heap's free pages), and returns freed heap pages
    to the system once ``held()`` (what the budget's parts hold) fell by
    :attr:`FREED` bytes, and now and then anyway, so that what clients held shows as
    freed. ``ended()``: how many connections have ended so far. Once some ended and a
    check sees no more end since the one before (a wave of them is over), what they held
    is given back: with :attr:`COLLECT_AFTER` or more since the last collection, a full
    garbage collection (``collect``) frees them first."""

    #: fraction of the budget where shedding starts
    HIGH: Final = 0.9
    #: checks between two returns of free heap pages otherwise
    TRIM_EVERY: Final = 10
    FREED: Final = 8 * MIB
    #: connections ended since the last collection that are worth one (its pause grows
    #: with what the heap holds, a few tens of milliseconds at most, once per wave)
    COLLECT_AFTER: Final = 100

    def __init__(
        self,
        budget: int,
        shed: Callable[[], None],
        rss: Callable[[], int] = resident_bytes,
        held: Callable[[], int] = lambda: 0,
        ended: Callable[[], int] = lambda: 0,
        collect: Callable[[], object] = gc.collect,
        trim: Callable[[], None] | None = None,
    ) -> None:
        self.budget = budget
        self._shed = shed
        self._rss = rss
        self._held = held
        self._ended = ended
        self._collect = collect
        self._ended_then = 0  # at the check before
        self._ended_settled = 0  # when the last wave was over
        self._ended_collected = 0  # at the last collection
        self.collections = 0
        self._trim = trim if trim is not None else _malloc_trim()
        self._checks = 0
        self._peak = 0
        self.sheds = 0
        self.last_rss = 0
        self._shedding = False

    def check(self) -> None:
        self._checks += 1
        rss = self.last_rss = self._rss()
        if rss > self.HIGH * self.budget:
            self.sheds += 1
            if not self._shedding:
                self._shedding = True
                log.warning("resident memory %.0f MiB is past %d%% of --max-memory (%.0f MiB): "
                            "dropping caches, half the resume buffer and the clients holding most",
                            rss / MIB, self.HIGH * 100, self.budget / MIB)
            self._shed()
            self._trim()
            self.last_rss = self._rss()
            return
        self._shedding = False
        ended, ended_then = self._ended(), self._ended_then
        self._ended_then = ended
        wave_over = ended == ended_then != self._ended_settled
        if wave_over:
            self._ended_settled = ended
            if ended - self._ended_collected >= self.COLLECT_AFTER:
                self._collect()
                self._ended_collected = ended
                self.collections += 1
        held = self._held()
        self._peak = max(self._peak, held)
        if wave_over or self._peak - held >= self.FREED or self._checks % self.TRIM_EVERY == 0:
            self._trim()
            self._peak = held
