"""Which processes the kernel's OOM killer killed: the kernel's own record of it.

A SIGKILL from the OOM killer and one from ``kill -9`` end a process alike; only the
kernel's log tells them apart. When the OOM killer picks a victim it logs, before it
sends the signal::

    oom-kill:constraint=CONSTRAINT_MEMCG,...,task=python3,pid=19429,uid=0
    Memory cgroup out of memory: Killed process 19429 (python3) total-vm:...

Rules:
- The log is read from ``/dev/kmsg`` (root or ``CAP_SYSLOG`` when
  ``kernel.dmesg_restrict`` is 1, as on most distributions): opened once, at its end,
  without blocking, and read only when asked about an exit, so a host that logs nothing
  costs nothing and one that logs a lot costs one read per record, per SIGKILL exit.
  Each record read is parsed for those two lines; the victims of the last
  :attr:`OomWatch.KEEP_S` seconds (the record's own timestamp) are kept, at most
  :attr:`OomWatch.MAX_VICTIMS` of them.
- Exact: a process is OOM-killed when a record names its pid; a SIGKILL exit no record
  names was someone else's ``kill``. When the kernel overwrote records before they were
  read, an exit they might have named is unknown (``None``), not ``False``.
- Without ``/dev/kmsg`` (no permission, a container without it) the host-wide
  ``oom_kill`` counter of ``/proc/vmstat`` still tells one thing exactly: when it has not
  moved since the last look, no process was OOM-killed in between (``False``); when it
  has, which one it was is unknown (``None``).
- Never fatal: a read error switches to the fallback, logged once.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..stats import Stats

__all__ = ["OomStats", "OomWatch", "parse_victim"]

log = logging.getLogger(__name__)

# The last "pid=" of the summary line is the victim's: a task name before it may hold one.
_VICTIM = re.compile(rb"(?:^oom-kill:.*[,:]pid=|Killed process )([0-9]{1,10})\b")
# A record is "PRIO,SEQ,USEC,FLAGS[,...];TEXT\n" followed by " KEY=VALUE\n" lines.
# PRIO is facility * 8 + level; the kernel's own facility is 0, and a record written to
# /dev/kmsg from user space never has it: nobody else can forge a victim.
_HEADER = re.compile(rb"[0-7],[0-9]{1,20},([0-9]{1,20}),")


def parse_victim(record: bytes) -> tuple[int, float] | None:
    """(pid, seconds since boot) of a kmsg record that names an OOM victim, else None."""
    head, sep, text = record.partition(b";")
    if not sep:
        return None
    m = _HEADER.match(head)
    if m is None:
        return None
    v = _VICTIM.search(text.split(b"\n", 1)[0])
    if v is None:
        return None
    return int(v.group(1)), int(m.group(1)) / 1e6


@dataclass(slots=True)
class OomStats(Stats):
    """Counters of the OOM record (written on the core's thread)."""

    #: where OOM kills are read from: ``kmsg``, ``vmstat`` or ``none``
    source: str = "none"
    #: kernel log records read
    records: int = 0
    #: OOM victims the log named
    victims: int = 0
    #: records the kernel overwrote before they were read
    overwritten: int = 0


class OomWatch:
    """The OOM record (``oom_killed(pid)``, for :class:`procstream.lifecycle.Lifecycle`).

    ``open()`` once; then call from one thread (the core's). ``close()`` at shutdown.
    """

    #: victims older than this (by the log's clock) are no longer matched to an exit
    KEEP_S: Final = 60.0
    MAX_VICTIMS: Final = 4096
    _READ_SIZE: Final = 8192  # more than the longest record (2 KiB of text and its fields)

    def __init__(
        self,
        kmsg: str = "/dev/kmsg",
        vmstat: str = "/proc/vmstat",
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kmsg_path = kmsg
        self.vmstat_path = vmstat
        self.monotonic = monotonic
        self.stats = OomStats()
        #: why the source in use was chosen (for the service's log)
        self.reason = "not opened"
        self._fd = -1
        self._victims: OrderedDict[int, float] = OrderedDict()  # pid -> log time
        self._vm_count: int | None = None

    def open(self) -> None:
        """Open the kernel log at its end, else fall back to ``/proc/vmstat``."""
        try:
            fd = os.open(self.kmsg_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self._fallback(f"{self.kmsg_path}: {exc.strerror or exc}")
            return
        try:
            os.lseek(fd, 0, os.SEEK_END)  # what happened before we started is not ours
        except OSError:
            pass
        self._fd = fd
        self.stats.source = "kmsg"
        self.reason = f"OOM kills from the kernel log ({self.kmsg_path})"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def oom_killed(self, pid: int) -> bool | None:
        """Whether the OOM killer killed ``pid`` lately; None when it can't be told."""
        if self._fd >= 0:
            overwritten = self._drain()
            if self._fd >= 0:
                if self._victims.pop(pid, None) is not None:
                    return True
                return None if overwritten else False
        return self._from_vmstat()

    # -- the kernel log ------------------------------------------------------------------

    def _drain(self) -> bool:
        """Read every new record; True if some were overwritten before we got to them."""
        overwritten = False
        fd = self._fd
        stats = self.stats
        while True:
            try:
                data = os.read(fd, self._READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # the ring moved past us; go on from its start
                    stats.overwritten += 1
                    overwritten = True
                    continue
                self.close()
                self._fallback(f"{self.kmsg_path}: read failed: {exc.strerror or exc}")
                log.warning("OOM kills: %s", self.reason)
                return overwritten
            if not data:
                break  # a plain file standing in for the log: its end
            # /dev/kmsg returns one record per read; a file, many lines at once
            for record in data.splitlines():
                if not record or record[:1] == b" ":
                    continue
                stats.records += 1
                victim = parse_victim(record)
                if victim is not None:
                    self._remember(*victim)
        self._forget_old()
        return overwritten

    def _remember(self, pid: int, when: float) -> None:
        victims = self._victims
        victims[pid] = when
        victims.move_to_end(pid)
        self.stats.victims += 1
        while len(victims) > self.MAX_VICTIMS:
            victims.popitem(last=False)

    def _forget_old(self) -> None:
        limit = self.monotonic() - self.KEEP_S
        victims = self._victims
        for pid, when in list(victims.items()):
            if when < limit:
                del victims[pid]

    # -- the fallback --------------------------------------------------------------------

    def _fallback(self, why: str) -> None:
        self._vm_count = self._read_vmstat()
        if self._vm_count is None:
            self.stats.source = "none"
            self.reason = f"{why}; no oom_kill counter in {self.vmstat_path} either: OOM kills are not told apart"
        else:
            self.stats.source = "vmstat"
            self.reason = (
                f"{why}; using {self.vmstat_path}'s host-wide oom_kill counter: a SIGKILL exit is known not "
                "to be an OOM kill while it stays put, and unknown when it moved"
            )

    def _from_vmstat(self) -> bool | None:
        count = self._read_vmstat()
        if count is None or self._vm_count is None:
            self._vm_count = count
            return None
        moved = count != self._vm_count
        self._vm_count = count
        return None if moved else False

    def _read_vmstat(self) -> int | None:
        try:
            with open(self.vmstat_path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        m = re.search(rb"^oom_kill ([0-9]{1,20})$", data, re.M)
        return int(m.group(1)) if m is not None else None
