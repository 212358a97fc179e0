"""Final per-task accounting at exit, from the kernel's TASKSTATS generic-netlink family.

The proc connector (:mod:`procstream.netlink.connector`) says *that* a process exited
and with which status, but carries no usage; by the time we read ``/proc/PID`` the
parent may have reaped it, and its last CPU and I/O are gone. TASKSTATS closes that
hole: a listener that registered a cpumask receives, at every task exit on those CPUs, a
``struct taskstats`` with the exit status, comm, uid/gid, pid/ppid, start time, elapsed
time, user/system CPU (µs), page faults, I/O bytes and context switches.

- :class:`Decoder` turns datagrams into :class:`TaskExit` records, with an
  :class:`~procstream.netlink.messages.EventsLost` marker where the kernel dropped some;
  :func:`parse_messages` decodes one datagram alone;
- :class:`TaskstatsListener` is the registration, a
  :class:`~procstream.netlink.listener.NetlinkListener` that a reader thread can
  ``select``/``poll`` together with a :class:`~procstream.netlink.connector.ProcConnector`;
- :func:`probe` says whether TASKSTATS can be used here, and why not.

What the kernel sends, per exiting task (``kernel/taskstats.c``, ``taskstats_exit``):
one generic-netlink message ``TASKSTATS_CMD_NEW`` holding an ``AGGR_PID`` nest
(``TASKSTATS_TYPE_PID`` + ``TASKSTATS_TYPE_STATS``) for the thread itself and, when the
last thread of a process that ever had several threads exits, an ``AGGR_TGID`` nest
(``TASKSTATS_TYPE_TGID`` + ``STATS``) for the whole process. A single-threaded process
gets only its ``AGGR_PID`` record (``pid == tgid``, flag ``AGROUP`` from version 12 on).
The kernel's ``AGGR_TGID`` statistics are sums over the threads of the delay-accounting
fields (``runtime_ns``, ``cpu_delay_ns``: every kernel) and of utime, stime, nvcsw,
nivcsw and elapsed times (only kernels with "taskstats: retain dead thread stats in TGID
queries"; older ones send zeros there: see ``TaskExit.summed``); faults and I/O are
never summed. The decoder fills the process's identity (comm, uid, gid, ppid, exit
status, start, lifetime) from the last thread's record of the same message. For
complete per-process totals, add the ``AGGR_PID`` records of one ``tgid``.

Relation with the proc connector, for whoever pairs the two streams:

- order: in ``do_exit()`` the kernel calls ``taskstats_exit()`` *before*
  ``exit_notify()`` and ``proc_exit_connector()``: for one task the taskstats record is
  queued first. They arrive on two sockets, so a reader may still see either first;
  buffer one side briefly (a few ms) rather than assume an order.
- identity: pids are the initial PID namespace's, as in the connector. A pid can be
  reused, so pair by pid + start time: ``TaskExit.btime`` is the start in whole epoch
  seconds (the kernel computes it as now - elapsed, so it is within 1 s of the true
  start; :meth:`TaskExit.matches_start`), and ``etime_us`` is the lifetime.
- exit status: ``TaskExit.status`` is the raw wait status, as the connector's
  ``ExitEvent.status``, and both read it alike (``exit_code``, ``signal``,
  ``core_dumped``: :class:`~procstream.netlink.messages.ExitStatus`).
- CPU: ``utime``/``stime`` are raw tick samples (``task_cputime``), not the values
  ``/proc/PID/stat`` and ``getrusage`` report, which ``cputime_adjust`` scales to the
  scheduler's exact runtime. On an idle CPU they agree within a few ticks; a task that
  shared its CPU can be charged several times too little or too much, since a tick
  charges whoever runs at that instant. With delay accounting on
  (:func:`delay_accounting`), every record also carries the exact runtime
  (``runtime_ns``) and ``TaskExit.cpu_s`` uses it.

Permissions: registering needs CAP_NET_ADMIN (``GENL_ADMIN_PERM``), the initial user and
PID namespaces (else EINVAL) and the initial network namespace (the family does not exist
elsewhere).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Literal, Self, TypeAlias

from .genl import GENL_HDRLEN, NETLINK_GENERIC, FamilyLookup, attribute, attributes, request
from .listener import NetlinkError, NetlinkListener, Probe, opening_problem, platform_problem
from .listener import error_text, errno_text, outside_initial_netns, socket_drops
from .messages import NLMSG_HDRLEN, NLMSG_MIN_TYPE, Buffer, DecodeStats, EventsLost, ExitStatus, MessageDecoder

__all__ = [
    "TaskExit",
    "TaskstatsEvent",
    "TaskstatsStats",
    "Decoder",
    "parse_messages",
    "TaskstatsListener",
    "TaskstatsError",
    "probe",
    "possible_cpus",
    "delay_accounting",
    "AFORK",
    "ASU",
    "ACORE",
    "AXSIG",
    "AGROUP",
]

# --- kernel constants (linux/taskstats.h, linux/acct.h) ---------------------------------------

TASKSTATS_GENL_NAME: Final = "TASKSTATS"
TASKSTATS_GENL_VERSION: Final = 1
TASKSTATS_CMD_GET: Final = 1
TASKSTATS_CMD_NEW: Final = 2
TASKSTATS_TYPE_PID: Final = 1
TASKSTATS_TYPE_TGID: Final = 2
TASKSTATS_TYPE_STATS: Final = 3
TASKSTATS_TYPE_AGGR_PID: Final = 4
TASKSTATS_TYPE_AGGR_TGID: Final = 5
TASKSTATS_TYPE_NULL: Final = 6  # padding some architectures put before an aggregate
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK: Final = 3
TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK: Final = 4

#: ``TaskExit.flags`` bits (``ac_flag``, linux/acct.h)
AFORK: Final = 0x01  # forked but did not exec
ASU: Final = 0x02  # used super-user privileges
ACORE: Final = 0x08  # dumped core
AXSIG: Final = 0x10  # killed by a signal
AGROUP: Final = 0x20  # the last task of its process (version 12 on)

_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_U32_MAX: Final = 0xFFFFFFFF

# struct taskstats (include/uapi/linux/taskstats.h), as offsetof() places its fields:
# version u16 @0, ac_exitcode u32 @4, ac_flag u8 @8, ac_nice u8 @9.
_HEAD = struct.Struct("=H2xIBb")
# The basic+extended accounting block, from ac_comm to nivcsw (208 bytes):
# ac_comm[32]; ac_sched u8 + ac_pad[3] + 4 bytes to align ac_uid(8);
# ac_uid ac_gid ac_pid ac_ppid ac_btime; 4 bytes to align ac_etime(8);
# ac_etime utime stime minflt majflt coremem virtmem hiwater_rss hiwater_vm read_char
# write_char read_syscalls write_syscalls read_bytes write_bytes cancelled_write_bytes
# nvcsw nivcsw
_BASIC = struct.Struct("=32s8x5I4x18Q")
# where each value of _BASIC ends, relative to the block: a short (old) struct has only
# the values that end within it
_BASIC_ENDS: Final = (32, 44, 48, 52, 56, 60, *range(72, 209, 8))
_BASIC_ZEROS: Final = (b"",) + (0,) * 23


@dataclass(frozen=True, slots=True)
class _Layout:
    delays: struct.Struct  # from cpu_count (16): cpu_delay_total, cpu_run_virtual_total
    basic: int  # offset of ac_comm
    btime64: int  # v10
    tgid: int  # v12, u32
    tgetime: int  # v12, u64


# The struct only grows at its end, except in version 15 (6.15's development kernels),
# which put the delay max/min fields in the middle (cpu/blkio/swapin, +48 bytes before
# ac_comm; freepages, thrashing, compact further on); version 16 moved them to the end.
# cpu_delay_total is at 24 in both; cpu_run_virtual_total at 72 (v15: 120).
_STD = _Layout(delays=struct.Struct("=8xQ40xQ"), basic=80, btime64=344, tgid=368, tgetime=376)
_V15 = _Layout(delays=struct.Struct("=8xQ88xQ"), basic=128, btime64=424, tgid=464, tgetime=472)
_DELAYS_OFF: Final = 16


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskExit(ExitStatus):
    """The kernel's final accounting of one exited task (``aggregate="pid"``) or process
    (``aggregate="tgid"``). Times in µs, sizes in bytes, ``btime`` in epoch seconds.

    ``aggregate="pid"``: one thread; ``pid`` is the thread id, ``tgid`` its process (from
    version 12's ``ac_tgid``, or the process record of the same message; 0 when unknown).
    A process exit is ``pid == tgid``; for a single-threaded process this record is all
    there is. ``etime_us`` is the thread's lifetime.

    ``aggregate="tgid"``: the whole process, sent with its last thread's record. ``pid``
    equals ``tgid``. The kernel sums ``runtime_ns``/``cpu_delay_ns`` into it, and
    ``utime_us``, ``stime_us``, ``nvcsw``, ``nivcsw`` only when ``summed`` (see the module
    doc); the fault and I/O counters are 0 here. Identity (comm, uid, gid, ppid,
    ``status``, ``flags``) comes from the last thread's record; ``etime_us`` is the
    process lifetime (``ac_tgetime``, version 12 on; before that the leader's lifetime if
    the leader exited last, else 0) and ``btime`` is derived from it.

    ``status`` is the raw wait status (``exit 7`` -> 0x700); ``exit_code``/``signal``/
    ``core_dumped`` read it. ``version`` is the struct's version (0 in process records
    of old kernels that did not set it). Fields the received version lacks are 0.
    """

    pid: int
    tgid: int
    aggregate: Literal["pid", "tgid"]
    ppid: int
    uid: int
    gid: int
    comm: str
    status: int
    btime: int
    etime_us: int
    utime_us: int
    stime_us: int
    minflt: int
    majflt: int
    read_bytes: int
    write_bytes: int
    nvcsw: int
    nivcsw: int
    version: int
    #: ``ac_flag``: AFORK, ASU, ACORE, AXSIG, AGROUP bits
    flags: int = 0
    nice: int = 0
    #: bytes passed to read()/write() and the like, cache hits included (``/proc/PID/io``
    #: rchar/wchar), and the number of such calls. The kernel rounds these, and
    #: ``read_bytes``/``write_bytes``/``cancelled_write_bytes``, down to a multiple of 1024.
    rchar: int = 0
    wchar: int = 0
    syscr: int = 0
    syscw: int = 0
    cancelled_write_bytes: int = 0
    #: peak resident and virtual memory, KiB
    hiwater_rss_kb: int = 0
    hiwater_vm_kb: int = 0
    #: the process's lifetime up to this exit (version 12 on; 0 when unknown)
    tgetime_us: int = 0
    #: False only for a process record whose utime/stime/switch sums the kernel left at
    #: zero (kernels without "retain dead thread stats"): add the threads' records, or
    #: use ``runtime_ns``, which every kernel sums
    summed: bool = True
    #: exact CPU time in ns (the scheduler's ``sum_exec_runtime``, ``cpu_run_virtual_total``)
    #: and time spent runnable but waiting for a CPU; both 0 unless delay accounting is on
    #: (sysctl ``kernel.task_delayacct=1`` or boot option ``delayacct``)
    runtime_ns: int = 0
    cpu_delay_ns: int = 0

    @property
    def exact_cpu(self) -> bool:
        """True when ``cpu_s`` is the scheduler's exact runtime, not tick samples."""
        return self.runtime_ns > 0

    @property
    def cpu_s(self) -> float:
        """CPU time in seconds: the exact runtime when delay accounting is on, else user +
        system from tick sampling (which can be several times off for a task that shared
        its CPU with others: the tick charges whoever runs at that instant)."""
        if self.runtime_ns:
            return self.runtime_ns / 1e9
        return (self.utime_us + self.stime_us) / 1e6

    @property
    def cpu_user_s(self) -> float:
        """User part of ``cpu_s``; with an exact runtime, split in the ticks' proportion
        (as ``/proc`` and getrusage do)."""
        return self._split()[0]

    @property
    def cpu_system_s(self) -> float:
        """System part of ``cpu_s`` (see ``cpu_user_s``)."""
        return self._split()[1]

    def _split(self) -> tuple[float, float]:
        user, system = self.utime_us / 1e6, self.stime_us / 1e6
        if not self.runtime_ns:
            return user, system
        total = self.runtime_ns / 1e9
        if self.stime_us == 0:  # as the kernel's cputime_adjust()
            return total, 0.0
        if self.utime_us == 0:
            return 0.0, total
        user = total * self.utime_us / (self.utime_us + self.stime_us)
        return user, total - user

    @property
    def lifetime_s(self) -> float:
        """Elapsed time from the task's start to its exit, in seconds."""
        return self.etime_us / 1e6

    @property
    def is_thread(self) -> bool:
        """True for a thread that is not its process's leader (``tgid`` known and != pid)."""
        return self.tgid != 0 and self.pid != self.tgid

    @property
    def group_dead(self) -> bool:
        """This record ends its process: a process record, or a thread record flagged
        AGROUP (version 12 on; single-threaded processes get no process record)."""
        return self.aggregate == "tgid" or bool(self.flags & AGROUP)

    def matches_start(self, start_time: float, tolerance: float = 1.0) -> bool:
        """Is this the task that started at ``start_time`` (epoch seconds, e.g. a
        ``ProcStatic.start_time``)? ``btime`` is whole seconds computed at exit as now -
        elapsed, so it lies within 1 s of the true start; use with a pid match."""
        return self.btime != 0 and abs(self.btime - start_time) <= tolerance


TaskstatsEvent: TypeAlias = TaskExit | EventsLost


# --- decoding ----------------------------------------------------------------------------


@dataclass(slots=True)
class TaskstatsStats(DecodeStats):
    """The decoder's counters. ``acks`` and ``errors`` are the answers to our requests;
    ``foreign`` counts messages of another generic-netlink family."""

    records: int = 0  # TaskExit records returned
    pid_records: int = 0
    tgid_records: int = 0
    versions: dict[int, int] = field(default_factory=dict)  # struct versions seen


class Decoder(MessageDecoder[TaskExit]):
    """Turns TASKSTATS datagrams into :class:`TaskExit` records.

    ``family_id``: TASKSTATS' generic-netlink id, when known; messages of other families
    are then counted as ``foreign`` instead of being read as taskstats. Garbage and
    truncated input are counted in ``stats.malformed`` and skipped; an NLMSG_OVERRUN
    becomes ``EventsLost("overrun")``.
    """

    __slots__ = ("family_id",)
    stats: TaskstatsStats

    def __init__(self, stats: TaskstatsStats | None = None, *, family_id: int | None = None) -> None:
        super().__init__(stats if stats is not None else TaskstatsStats())
        self.family_id = family_id

    def _message(
        self, data: Buffer, off: int, end: int, nl_type: int, nl_seq: int, out: list[TaskstatsEvent]
    ) -> None:
        stats = self.stats
        if nl_type < NLMSG_MIN_TYPE:
            return  # a DONE with a body ends a dump, which we never ask for
        if self.family_id is not None and nl_type != self.family_id:
            stats.foreign += 1
            return
        start = off + NLMSG_HDRLEN
        if end - start < GENL_HDRLEN:
            stats.malformed += 1
            return
        if data[start] != TASKSTATS_CMD_NEW:
            stats.ignored += 1
            return
        first = len(out)
        attrs, whole = attributes(data, start + GENL_HDRLEN, end)
        for a_type, a_start, a_end in attrs:
            if a_type == TASKSTATS_TYPE_AGGR_PID or a_type == TASKSTATS_TYPE_AGGR_TGID:
                rec = _decode_aggr(data, a_start, a_end, a_type, stats)
                if rec is not None:
                    out.append(rec)
            elif a_type != TASKSTATS_TYPE_NULL:
                stats.ignored += 1
        if not whole:
            stats.malformed += 1
        if len(out) - first > 1:
            _complete_group(out, first)


def parse_messages(
    data: Buffer, stats: TaskstatsStats | None = None, *, family_id: int | None = None
) -> list[TaskstatsEvent]:
    """Decode one datagram on its own (see :class:`Decoder`). Pure; never raises."""
    return Decoder(stats, family_id=family_id).feed(data)


def _decode_aggr(data: Buffer, start: int, end: int, a_type: int, stats: TaskstatsStats) -> TaskExit | None:
    """One AGGR_PID/AGGR_TGID nest: the task's id and its struct taskstats."""
    want_id = TASKSTATS_TYPE_PID if a_type == TASKSTATS_TYPE_AGGR_PID else TASKSTATS_TYPE_TGID
    ident: int | None = None
    s_off = s_len = -1
    attrs, whole = attributes(data, start, end)
    for n_type, n_start, n_end in attrs:
        if n_type == want_id and n_end - n_start >= _U32.size:
            ident = _U32.unpack_from(data, n_start)[0]
        elif n_type == TASKSTATS_TYPE_STATS:
            s_off, s_len = n_start, n_end - n_start
        elif n_type != TASKSTATS_TYPE_NULL:
            stats.ignored += 1
    if not whole or ident is None or s_off < 0 or s_len < 8:
        stats.malformed += 1
        return None
    rec = _decode_stats(data, s_off, s_len, a_type == TASKSTATS_TYPE_AGGR_PID, ident)
    stats.records += 1
    if a_type == TASKSTATS_TYPE_AGGR_PID:
        stats.pid_records += 1
    else:
        stats.tgid_records += 1
    stats.versions[rec.version] = stats.versions.get(rec.version, 0) + 1
    return rec


def _decode_stats(data: Buffer, off: int, length: int, is_pid: bool, ident: int) -> TaskExit:
    """One ``struct taskstats`` of ``length`` bytes (>= 8) at ``off``."""
    if length >= _HEAD.size:
        version, exitcode, flag, nice = _HEAD.unpack_from(data, off)
    else:
        version = struct.unpack_from("=H", data, off)[0]
        exitcode = _U32.unpack_from(data, off + 4)[0]
        flag = nice = 0
    layout = _V15 if version == 15 else _STD
    if length >= _DELAYS_OFF + layout.delays.size:
        cpu_delay, runtime = layout.delays.unpack_from(data, off + _DELAYS_OFF)
    else:
        cpu_delay = runtime = 0
    avail = length - layout.basic
    if avail >= _BASIC.size:
        vals = _BASIC.unpack_from(data, off + layout.basic)
    elif avail > 0:
        # An old, shorter struct: read what it has, the rest is 0.
        chunk = bytes(data[off + layout.basic : off + length]) + b"\0" * (_BASIC.size - avail)
        full = _BASIC.unpack(chunk)
        vals = tuple(v if e <= avail else z for v, e, z in zip(full, _BASIC_ENDS, _BASIC_ZEROS))
    else:
        vals = _BASIC_ZEROS
    (
        raw_comm, uid, gid, _ac_pid, ppid, btime,
        etime, utime, stime, minflt, majflt, _coremem, _virtmem, hiwater_rss, hiwater_vm,
        rchar, wchar, syscr, syscw, read_bytes, write_bytes, cancelled, nvcsw, nivcsw,
    ) = vals  # fmt: skip
    if version >= 10 and length >= layout.btime64 + 8:
        btime = _U64.unpack_from(data, off + layout.btime64)[0]  # no 2106 limit
    tgid = tgetime = 0
    if version >= 12 and length >= layout.tgetime + 8:
        tgid = _U32.unpack_from(data, off + layout.tgid)[0]
        tgetime = _U64.unpack_from(data, off + layout.tgetime)[0]
    if not is_pid:
        tgid = ident
    comm = raw_comm.split(b"\0", 1)[0].decode("utf-8", "replace") if raw_comm else ""
    return TaskExit(
        ident, tgid, "pid" if is_pid else "tgid", ppid, uid, gid, comm, exitcode, btime,
        etime, utime, stime, minflt, majflt, read_bytes, write_bytes, nvcsw, nivcsw, version,
        flag, nice, rchar, wchar, syscr, syscw, cancelled, hiwater_rss, hiwater_vm, tgetime,
        True if is_pid else (etime != 0 or utime != 0 or stime != 0), runtime, cpu_delay,
    )  # fmt: skip


def _complete_group(out: list[TaskstatsEvent], first: int) -> None:
    """A message with a thread record and a process record: give each what the other knows.

    The kernel leaves the process record's identity zeroed (it copies a struct that only
    accumulates sums), and a thread record before version 12 has no tgid."""
    thread = group = None
    for i in range(first, len(out)):
        rec = out[i]
        if isinstance(rec, TaskExit):
            if rec.aggregate == "pid" and thread is None:
                thread = i
            elif rec.aggregate == "tgid" and group is None:
                group = i
    if thread is None or group is None:
        return
    t = out[thread]
    g = out[group]
    assert isinstance(t, TaskExit) and isinstance(g, TaskExit)
    if t.tgid == 0:
        t = replace(t, tgid=g.tgid)
        out[thread] = t
    if t.tgetime_us:
        etime = t.tgetime_us
        # both are "now - elapsed" at the same exit: shift the thread's start back
        btime = t.btime - round((t.tgetime_us - t.etime_us) / 1e6) if t.btime else 0
    elif t.pid == g.tgid:
        etime, btime = t.etime_us, t.btime
    else:
        etime = btime = 0
    # positional: dataclasses.replace() is much slower, and this runs at every exit of a
    # multi-threaded process
    out[group] = TaskExit(
        g.pid, g.tgid, g.aggregate, g.ppid or t.ppid, g.uid or t.uid, g.gid or t.gid,
        g.comm or t.comm, g.status or t.status, btime, etime, g.utime_us, g.stime_us,
        g.minflt, g.majflt, g.read_bytes, g.write_bytes, g.nvcsw, g.nivcsw, g.version,
        g.flags | t.flags, t.nice, g.rchar, g.wchar, g.syscr, g.syscw,
        g.cancelled_write_bytes, g.hiwater_rss_kb, g.hiwater_vm_kb, t.tgetime_us, g.summed,
        g.runtime_ns, g.cpu_delay_ns,
    )  # fmt: skip


def possible_cpus() -> str:
    """The kernel's list of possible CPUs ("0-N"), the mask to register for every exit.

    From /sys/devices/system/cpu/possible; else ``0-(os.cpu_count()-1)`` (which misses
    CPUs that could be hot-plugged later)."""
    try:
        with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
            text = f.read().strip()
        if text:
            return text
    except (OSError, UnicodeDecodeError):
        pass
    n = os.cpu_count() or 1
    return f"0-{n - 1}" if n > 1 else "0"


# --- the socket --------------------------------------------------------------------------


class TaskstatsError(NetlinkError):
    """TASKSTATS can't be used; ``str()`` says why, for a log."""


class TaskstatsListener(NetlinkListener[TaskExit]):
    """A non-blocking registration for the kernel's exit accounting on every CPU.

    Use from asyncio::

        ts = TaskstatsListener().open()
        loop.add_reader(ts.fileno(), lambda: handle(ts.read_events()))

    or from a thread, alone (``while ts.wait_readable(1.0) is not None: ...``) or with a
    :class:`~procstream.netlink.connector.ProcConnector` in the same ``select.poll``. One
    reader at a time; call ``close()`` from the reading thread or once it has stopped. A
    datagram is one exit (one record; two for a multi-threaded process's last thread),
    which ``read_events``'s ``max_datagrams`` counts.

    Loss never raises: it arrives as an :class:`EventsLost` marker and is counted in
    ``lost`` (markers), ``enobufs`` (overflows) and ``dropped`` (records known dropped,
    from the socket's drop counter, which each ENOBUFS marker's ``count`` also gives).
    """

    Error = TaskstatsError
    #: an exit costs over a kilobyte of buffer: this holds tens of seconds of an exit
    #: storm while the reader is stalled
    DEFAULT_RCVBUF = 16 * 1024 * 1024
    _decoder: Decoder
    stats: TaskstatsStats

    def __init__(
        self,
        *,
        rcvbuf: int | None = None,
        recv_size: int = 65536,
        force_rcvbuf: bool = True,
        cpumask: str | None = None,
    ) -> None:
        super().__init__(Decoder(), rcvbuf=rcvbuf, recv_size=recv_size, force_rcvbuf=force_rcvbuf)
        # Every datagram lands in this one buffer: records hold decoded values, not
        # views into it, so no bytes object is made per exit.
        self._buf = bytearray(recv_size)
        self._view = memoryview(self._buf)
        self._mask = cpumask
        self._seq = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        self._drops_seen = 0
        #: records the kernel dropped for this socket (its drop counter), when known
        self.dropped = 0

    @property
    def family_id(self) -> int | None:
        """TASKSTATS' generic-netlink id, once opened."""
        return self._decoder.family_id

    @property
    def cpumask(self) -> str | None:
        """The CPU list registered (or to register)."""
        return self._mask

    # -- lifecycle

    def open(self, *, timeout: float = 1.0) -> Self:
        """Create the socket, look up the family and register every possible CPU, waiting
        for the kernel's acknowledgement. Returns ``self``.

        Raises :class:`TaskstatsError` with a reason fit for a log.
        """
        return self._open(
            socket.SOCK_RAW, NETLINK_GENERIC, "cannot create a NETLINK_GENERIC socket ({})",
            lambda sock: self._register(sock, time.monotonic() + timeout),
        )  # fmt: skip

    def _register(self, sock: socket.socket, deadline: float) -> None:
        why = _netns_problem()
        if why:
            # The kernel sends records to a port of the initial network namespace only;
            # elsewhere registration succeeds and nothing ever arrives.
            raise TaskstatsError(errno.ENETUNREACH, why)
        self._bind(sock, 0)
        self._drops_seen = socket_drops(sock) or 0
        self._decoder.family_id = self._look_up_family(deadline)
        if self._mask is None:
            self._mask = possible_cpus()
        err = self._ask(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, deadline, "registration")
        if err:
            raise TaskstatsError(err, _register_problem(err, self._mask))
        self._subscribed = True

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    def _look_up_family(self, deadline: float) -> int:
        """TASKSTATS' id: generic-netlink ids are handed out as families register."""
        lookup = FamilyLookup(TASKSTATS_GENL_NAME, self._next_seq(), self.stats)
        try:
            self._send(lookup.request)
        except OSError as exc:
            raise TaskstatsError(exc.errno, f"cannot query generic netlink ({error_text(exc)})") from exc
        # until the answer comes, what arrives is read as the controller's
        decoder, self._decoder = self._decoder, lookup  # type: ignore[assignment]
        try:
            err = self._await_answer(lookup.seq, deadline, "the family lookup")
        finally:
            self._decoder = decoder
        if err is None:
            raise TaskstatsError(errno.ETIMEDOUT, "no answer from the kernel for the family lookup in time")
        if err == errno.ENOENT:
            raise TaskstatsError(
                err, "the kernel has no TASKSTATS family: built without "
                "CONFIG_TASKSTATS, or this process is not in the initial "
                "network namespace (a container needs host networking)"
            )
        if err:
            raise TaskstatsError(err, f"the family lookup failed ({errno_text(err)})")
        if lookup.family is None:
            raise TaskstatsError(errno.EPROTO, "the family lookup gave no id")
        return lookup.family

    def _cpumask_request(self, attr: int, *, ack: bool) -> tuple[bytes, int]:
        """A register/deregister request for our CPUs, and its sequence number."""
        assert self._mask is not None and self.family_id is not None
        seq = self._next_seq()
        attrs = attribute(attr, self._mask.encode("ascii") + b"\0")
        return request(self.family_id, TASKSTATS_CMD_GET, TASKSTATS_GENL_VERSION, seq, attrs, ack=ack), seq

    def _ask(self, attr: int, deadline: float, what: str) -> int:
        """Send a register/deregister request and wait for the kernel's answer: the errno
        it carries (0: done). Records that arrive meanwhile are kept for later."""
        message, seq = self._cpumask_request(attr, ack=True)
        try:
            self._send(message)
        except OSError as exc:
            raise TaskstatsError(exc.errno, f"cannot send to TASKSTATS ({error_text(exc)})") from exc
        err = self._await_answer(seq, deadline, what)
        if err is None:
            raise TaskstatsError(errno.ETIMEDOUT, f"no answer from the kernel for {what} in time")
        return err

    def deregister(self, timeout: float = 1.0) -> None:
        """Stop the kernel sending us records, keeping the socket open (what remains queued
        can still be read). ``close()`` does it too; call this to stop first, read the
        rest, then close."""
        if self._sock is None or not self._subscribed:
            return
        self._subscribed = False
        err = self._ask(TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, time.monotonic() + timeout, "deregistration")
        if err:
            raise TaskstatsError(err, f"the kernel refused to deregister ({errno_text(err)})")

    def close(self) -> None:
        """Deregister (so the kernel stops sending to this port) and close. Idempotent.

        The registration belongs to the socket's port, which a forked child shares: a
        child must not call this (it would deregister the parent); ``os._exit`` it."""
        super().close()

    def _unsubscribe(self, sock: socket.socket) -> None:
        # No wait for the answer: the kernel handles the request within send(), and it
        # drops a listener it can no longer reach on its own.
        sock.send(self._cpumask_request(TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, ack=False)[0])

    # -- reading

    def _receiver(
        self, sock: socket.socket
    ) -> tuple[Callable[[bytearray], int], bytearray, Callable[[int, list[TaskstatsEvent]], None]]:
        view = self._view
        feed = self._decoder.feed

        def decode(n: int, out: list[TaskstatsEvent]) -> None:
            feed(view[:n], out)

        return sock.recv_into, self._buf, decode

    def _drop_count(self, sock: socket.socket) -> int | None:
        drops = socket_drops(sock)
        if drops is None:
            return None
        new = (drops - self._drops_seen) & _U32_MAX  # the counter wraps
        self._drops_seen = drops
        self.dropped += new
        return new


def _netns_problem() -> str | None:
    """Are we outside the initial network namespace? (None: no, or can't tell; then
    probe()'s test exit decides.)"""
    if outside_initial_netns():
        return (
            "this process is not in the initial network namespace (a container needs host "
            "networking): the kernel sends exit records there only"
        )
    return None


def _register_problem(err: int, mask: str) -> str:
    if err == errno.EPERM:
        return "the kernel refused the registration (EPERM): it needs root or CAP_NET_ADMIN"
    if err == errno.EINVAL:
        return (
            f"the kernel refused the registration (EINVAL): this process is in a child "
            f"user or PID namespace, or the CPU list {mask!r} is not within the possible CPUs"
        )
    return f"the kernel refused the registration ({errno_text(err)})"


# --- probe -------------------------------------------------------------------------------

_SOURCE: Final = "taskstats"


def probe(timeout: float = 1.0) -> Probe:
    """Can procstream receive exit accounting here? The reason is a log line either way.

    Call once at start-up (it takes a few ms): it opens and registers (so every
    refusal, no CONFIG_TASKSTATS, no CAP_NET_ADMIN, a child user or PID namespace, comes
    as the kernel says it), then starts and joins a thread of its own and waits up to
    ``timeout`` for that thread's exit record: only an end-to-end test catches a child
    network namespace, where registering succeeds and nothing arrives."""
    why = platform_problem()
    if why:
        return Probe.refused(_SOURCE, why)
    listener = TaskstatsListener(rcvbuf=256 * 1024)
    why = opening_problem(lambda: listener.open(timeout=timeout))
    if why:
        return Probe.refused(_SOURCE, why)
    try:
        seen = _see_a_thread_exit(listener, timeout)
        family, mask = listener.family_id, listener.cpumask
    except OSError as exc:
        return Probe.refused(_SOURCE, f"unexpected error reading it ({error_text(exc)})")
    finally:
        listener.close()
    if not seen:
        return Probe.refused(_SOURCE, (
            f"registered, but no exit record arrived within {timeout:g} s: this process is "
            "probably not in the initial network namespace (a container needs host networking)"
        ))
    exact = delay_accounting()
    cpu = (
        "exact CPU times: delay accounting on" if exact
        else "CPU times from tick samples: delay accounting off (sysctl kernel.task_delayacct=1 "
        "makes them exact)"
    )
    return Probe(True, f"{_SOURCE} available (family {family}, CPUs {mask}; {cpu})")


def delay_accounting() -> bool | None:
    """Is the kernel's delay accounting on (``/proc/sys/kernel/task_delayacct``)? Then
    records carry the exact CPU runtime (``TaskExit.runtime_ns``). None: can't tell (no
    such sysctl: before Linux 5.14, or built without CONFIG_TASK_DELAY_ACCT)."""
    try:
        with open("/proc/sys/kernel/task_delayacct", "rb") as f:
            return f.read().strip() not in (b"0", b"")
    except OSError:
        return None


def _see_a_thread_exit(listener: TaskstatsListener, timeout: float) -> bool:
    """Start and join a thread that does nothing; True once its exit record arrived."""
    thread = threading.Thread(target=lambda: None, name="taskstats-probe")
    thread.start()
    thread.join()
    tid = thread.native_id
    deadline = time.monotonic() + timeout
    while True:
        for rec in listener.read_events():
            if isinstance(rec, TaskExit) and rec.pid == tid:
                return True
        left = deadline - time.monotonic()
        if left <= 0 or listener.wait_readable(left) is None:
            return False
