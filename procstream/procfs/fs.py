"""``FS`` (a /proc mount point) and ``Proc`` (one process, read lazily for one poll).

This is the layer that decides which files a question needs and what a failure means;
the parser modules only turn bytes into values. Rules (see also ``errors.py``):

- ``stat``, ``status`` and ``cmdline`` are required: if one is missing the process has
  gone (``ProcessLookupError``), if unreadable ``PermissionError``.
- ``io``, ``fd``, ``task/`` (and ``cgroup``, ``limits``, ``smaps_rollup``, ``wchan``) are
  optional: unreadable (``io`` and ``fd`` are owner-only) or missing while the process is
  still there, their values fall back to a default (0 bytes, -1 fds, leader-only thread
  data) and ``ProcMetrics.partial_errors`` counts them. Missing *because the process has
  gone* is still ``ProcessLookupError``: after an ENOENT we look whether ``stat`` is still
  there.
- What process-exporter reads with ``-threads`` and ``-gather-smaps`` (each thread's
  names and counters, ``smaps_rollup``) and its wait channels are read only when the
  ``FS`` is made to: they cost a read per thread, or a walk of the memory map.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
import stat as _stat_mod
from collections.abc import Iterator, Mapping
from typing import Final, NamedTuple

from ._read import read_file
from .boot import parse_btime
from .cgroup import parse_cgroup
from .cmdline import READ_LIMIT as CMDLINE_READ_LIMIT
from .cmdline import parse_cmdline
from .errors import ProcfsError, ProcfsParseError
from .fd import count_open_fds
from .io import parse_io
from .limits import Limit, parse_limits, parse_max_open_files
from .models import (
    ExecMark,
    ProcExtras,
    ProcId,
    ProcMetrics,
    ProcStatic,
    Sample,
    States,
    ThreadReading,
    ThreadSample,
    state_of,
)
from .schedstat import parse_schedstat
from .smaps import parse_smaps_rollup
from .stat import PF_EXITING, PF_KTHREAD, Stat, parse_flags, parse_stat, parse_state
from .status import Status, parse_ctx_switches, parse_status
from .wchan import parse_wchan

# Reads of a process's stat and cmdline until both are of one program (it may exec
# meanwhile), or an empty argv is taken as its own.
_EXEC_TRIES: Final = 3

__all__ = ["FS", "Proc"]


class _Tasks(NamedTuple):
    """What the readings of a process's threads add up to (see ``_sum_threads``)."""

    #: None: no thread could be read
    states: States | None
    voluntary: int
    nonvoluntary: int
    samples: tuple[ThreadSample, ...]
    wchans: tuple[str, ...]
    #: 1 if some thread's optional file (io, wchan) could not be read
    partial: int


class FS:
    """A procfs mount point (``/proc``, a host's ``/proc`` bind-mounted elsewhere, or a
    fake tree laid out like it). Create once; it reads ``{mount_point}/stat`` for the
    boot time and fails early with ``ProcfsError`` if that is impossible.

    ``thread_detail``: count thread states and sum context switches over every thread
    (``task/*/stat`` and ``task/*/status``, two extra reads per thread) as
    process-exporter does; off, only the main thread's are used.

    Off unless asked for, because each costs reads at every poll:
    ``threads``: each thread's name and counters (``ProcExtras.threads``; also reads
    ``task/*/io``; implies ``thread_detail``), process-exporter's ``-threads``;
    ``smaps``: proportional memory from ``smaps_rollup`` (``ProcExtras.pss_bytes``,
    ``swap_pss_bytes``), its ``-gather-smaps``;
    ``wchan``: each waiting thread's wait channel (``ProcExtras.wchans``; ``wchan``, or
    ``task/*/wchan`` of a multi-threaded process).
    With any of them, ``ProcMetrics.extras`` holds what they read.
    """

    def __init__(
        self,
        mount_point: str | os.PathLike[str] = "/proc",
        *,
        thread_detail: bool = True,
        threads: bool = False,
        smaps: bool = False,
        wchan: bool = False,
    ) -> None:
        self.mount_point: str = os.fspath(mount_point)
        self.thread_detail: bool = thread_detail or threads
        self.threads: bool = threads
        self.smaps: bool = smaps
        self.wchan: bool = wchan
        try:
            mode = os.stat(self.mount_point).st_mode
        except OSError as exc:
            raise ProcfsError(
                exc.errno, f"procfs mount point unreadable ({exc.strerror})", self.mount_point
            ) from exc
        if not _stat_mod.S_ISDIR(mode):
            raise ProcfsError(
                errno.ENOTDIR, "procfs mount point is not a directory", self.mount_point
            )
        path = os.path.join(self.mount_point, "stat")
        try:
            data = read_file(path)
            # procfs files report size 0 (their content is made on read); a copied tree's
            # stat can't be empty (it holds btime). See fd.py for why this matters.
            self.is_procfs: bool = os.stat(path).st_size == 0
        except OSError as exc:
            raise ProcfsError(exc.errno, f"cannot read ({exc.strerror})", path) from exc
        try:
            self.boot_time: int = parse_btime(data)
        except ProcfsParseError as exc:
            raise ProcfsError(errno.EINVAL, f"cannot read ({exc})", path) from exc
        self.clock_ticks: int = os.sysconf("SC_CLK_TCK")
        self.page_size: int = os.sysconf("SC_PAGE_SIZE")
        #: boot time to the microsecond, for start times: ``btime`` is whole seconds,
        #: which would put every start up to 1 s early (and make lifetimes, and matching
        #: a process with what the kernel reports at its exit, off by as much).
        self.boot_time_precise: float = float(self.boot_time)
        if self.is_procfs:
            precise = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
            if abs(precise - self.boot_time) < 2.0:  # the same host's clock, as it should be
                self.boot_time_precise = precise

    def __repr__(self) -> str:
        extras = "".join(f", {name}=True" for name in ("threads", "smaps", "wchan") if getattr(self, name))
        return f"FS({self.mount_point!r}, thread_detail={self.thread_detail}{extras})"

    def all_procs(self) -> Iterator[Proc]:
        """A ``Proc`` for every process (numeric entry) of the mount point, pid order.

        Call once per poll. The directory is listed here, eagerly: a failure raises
        ``ProcfsError`` from this call, not from the first ``next()``. Processes are not
        read until asked; one that exits meanwhile raises ``ProcessLookupError`` then.
        Entries that are not a pid as the kernel writes one (ASCII digits, no leading
        zero) are skipped: ``str.isdigit()`` alone accepts ``'²'``, which ``int()`` refuses.
        """
        try:
            names = os.listdir(self.mount_point)
        except OSError as exc:
            raise ProcfsError(
                exc.errno, f"cannot list processes ({exc.strerror})", self.mount_point
            ) from exc
        pids = sorted(int(name) for name in names if _is_pid(name))
        return (Proc(self, pid) for pid in pids)

    def proc(self, pid: int) -> Proc:
        """The process ``pid``; nothing is read (or checked) until a method asks."""
        return Proc(self, pid)


def _is_pid(name: str) -> bool:
    return name.isascii() and name.isdigit() and name[0] != "0" and len(name) < 11


def _same_reading(new: Sample, old: Sample) -> bool:
    """Everything ``new`` read is what ``old`` had."""
    return (new.stat == old.stat and new.sched == old.sched and new.metrics == old.metrics
            and new.mark == old.mark and new.threads == old.threads)


class Proc:
    """One process as seen in one poll: implements ``ProcLike`` (see models.py).

    Reads lazily and caches every file's bytes and every parsed result for the life of
    the object, so ``static()`` and ``metrics()`` share one read of ``stat`` and one of
    ``status``. Make a new one (``FS.all_procs``/``FS.proc``) for the next poll, and hand
    it the last poll's :class:`Sample` with :meth:`follow`: it then reads only what may
    have changed.
    """

    __slots__ = (
        "_fs",
        "_pid",
        "_dir",
        "_raw",
        "_stat_raw",
        "_stat",
        "_status",
        "_id",
        "_static",
        "_static_cgroups",
        "_sample",
        "_limit",
        "_prev",
        "_same",
        "_idle",
    )

    def __init__(self, fs: FS, pid: int) -> None:
        self._fs = fs
        self._pid = pid
        self._dir = f"{fs.mount_point}/{pid}/"
        self._raw: dict[str, bytes] = {}
        self._stat_raw: bytes | None = None
        self._stat: Stat | None = None
        self._status: Status | None = None
        self._id: ProcId | None = None
        self._static: ProcStatic | None = None
        self._static_cgroups: ProcStatic | None = None
        self._sample: Sample | None = None
        self._limit: int | None = None
        self._prev: Sample | None = None
        # stat is byte for byte the one of ``_prev``: its values are ``_prev``'s
        self._same = False
        # not run since ``_prev`` (its schedstat is the same): nothing it does has moved
        self._idle = False

    def __repr__(self) -> str:
        return f"Proc({self._pid}, {self._fs.mount_point!r})"

    @property
    def pid(self) -> int:
        return self._pid

    # -- files -------------------------------------------------------------------

    def _file(self, name: str, until_eof: bool = True, limit: int | None = None) -> bytes:
        data = self._raw.get(name)
        if data is None:
            data = self._raw[name] = read_file(self._dir + name, until_eof=until_eof, limit=limit)
        return data

    def _stat_bytes(self) -> bytes:
        data = self._stat_raw
        if data is None:
            data = self._stat_raw = read_file(self._dir + "stat", until_eof=False)
        return data

    def _stat_fields(self) -> Stat:
        if self._stat is None:
            self._stat = parse_stat(self._stat_bytes())
        return self._stat

    def _status_fields(self) -> Status:
        if self._status is None:
            # status is one record the kernel renders whole: a short read is all of it
            self._status = parse_status(self._file("status", until_eof=False))
        return self._status

    def _missing(self, exc: ProcessLookupError) -> None:
        """Called when an optional file was not found: return if only that file is
        missing (the process is still there), re-raise ``exc`` if the process is gone."""
        if exc.errno == errno.ENOENT:
            try:
                os.stat(self._dir + "stat")
                return
            except OSError:
                pass
        raise exc

    # -- ProcLike ----------------------------------------------------------------

    def follow(self, prev: Sample) -> None:
        """Read this process knowing ``prev``, its :class:`Sample` of an earlier poll.

        - A single-threaded process whose ``schedstat`` (the scheduler's run time and
          run count) is the same bytes has not run since ``prev`` was read: nothing it
          changes by running has moved, which is everything a poll reads (its CPU time,
          faults, I/O, context switches, descriptors; and exec, exit and thread creation
          all take running). It costs that one read and its sample is ``prev``.
        - Otherwise ``stat`` is read, but not parsed again when it is the same bytes:
          identity, exec mark and its values are ``prev``'s.
        - A multi-threaded one (with ``thread_detail``) reads every thread's
          ``schedstat``; only threads that ran have their ``stat`` and ``status`` read
          (and ``io``, ``wchan`` when asked for), and when none ran (and none came or
          went), ``io``, ``status``, ``fd`` and ``smaps_rollup`` are ``prev``'s. Its own
          ``stat`` is read at every poll.
        - Without a usable ``schedstat`` (missing, unreadable), or multi-threaded
          without ``thread_detail``, every file is read.

        ``schedstat`` is read before the files it stands for: a run after it moves it
        by the next poll, a run before it shows in those files. What can change while a
        process does not run is not seen this way: its resident size and swap when its
        pages are reclaimed, its state when it is woken but has not run yet, its
        descriptors when another process sharing its descriptor table opens files, its
        proportional memory when processes it shares pages with map or unmap them.
        ``sample(restat=True)`` reads ``stat`` regardless and ``sample(full=True)``
        everything, which the caller does often enough to bound how long those go
        unseen.

        Ignored if another process has the pid now (a new start time), or if the
        process was already read.
        """
        if self._id is None:
            self._prev = prev

    def proc_id(self) -> ProcId:
        """Identity; reads only ``stat``. Call first: it is the cheapest read."""
        if self._id is None:
            prev = self._prev
            # only a single-threaded process's sample has a schedstat (see ``_read``)
            if prev is not None and prev.sched and self._sched() == prev.sched:
                self._same = self._idle = True
                self._id = prev.id
                return prev.id
            raw = self._stat_bytes()
            if prev is not None and raw == prev.stat:
                self._same = True
                self._id = prev.id
            else:
                pid_id = ProcId(self._pid, self._stat_fields().starttime)
                if prev is not None and prev.id != pid_id:
                    self._prev = None  # the pid was reused: nothing to compare with
                self._id = pid_id
        return self._id

    def exec_mark(self) -> ExecMark:
        """What changes on exec; reads only ``stat`` (shared with ``proc_id``)."""
        self.proc_id()
        prev = self._prev
        if self._same and prev is not None:
            return prev.mark
        st = self._stat_fields()
        return ExecMark(st.comm, st.startstack)

    def glance(self) -> Sample:
        """Identity and exec mark (reads only ``stat``): what a process nobody tracks
        needs; ``follow`` it at the next poll and ``stat`` is compared, not parsed."""
        pid_id = self.proc_id()
        prev = self._prev
        if self._same and prev is not None:
            return prev
        return Sample(pid_id, self.exec_mark(), stat=self._stat_bytes())

    def static(self, *, cgroups: bool = False) -> ProcStatic:
        """Naming attributes (reads stat, cmdline, status); once per process lifetime.

        ``cgroups=True`` also reads ``cgroup`` (``()`` if the kernel has none). Of
        ``cmdline`` only the first ``CMDLINE_READ_LIMIT`` bytes are read; longer, the
        result says ``cmdline_truncated``.
        """
        if self._static is None:
            fs = self._fs
            st, raw, known = self._one_program()
            # one byte more than kept (see _read_cmdline): tells a cut argv from one of
            # exactly the limit
            cut = len(raw) > CMDLINE_READ_LIMIT
            argv = parse_cmdline(raw[:CMDLINE_READ_LIMIT] if cut else raw)
            self._static = ProcStatic(
                st.comm,
                argv,
                st.ppid,
                fs.boot_time_precise + st.starttime / fs.clock_ticks,
                self._status_fields().uid,
                cmdline_known=bool(argv) or known,
                cmdline_truncated=cut,
            )
        if not cgroups:
            return self._static
        if self._static_cgroups is None:
            try:
                paths = parse_cgroup(self._file("cgroup"))
            except ProcessLookupError as exc:
                self._missing(exc)
                paths = ()
            self._static_cgroups = dataclasses.replace(self._static, cgroups=paths)
        return self._static_cgroups

    def _read_cmdline(self) -> bytes:
        return read_file(self._dir + "cmdline", limit=CMDLINE_READ_LIMIT + 1)

    def _one_program(self) -> tuple[Stat, bytes, bool]:
        """A ``stat`` and a ``cmdline`` of one and the same program, and whether an empty
        argv is the process's own.

        A process may exec between two reads: a ``stat`` read before the exec and a
        ``cmdline`` after it (or the reverse) would name one program with another's
        arguments; and from the exec's switch to the new program's memory until the
        kernel has set up its arguments, ``cmdline`` reads empty while ``stat`` already
        says the new name. So ``stat`` is read again after ``cmdline``: the same name and
        stack, and a non-empty argv, and both belong to one program; else both are read
        again, as the program it is now (at most ``_EXEC_TRIES`` times). An argv read
        before any ``stat`` (:meth:`read_argv_first`) is read again after it instead: the
        same argv both times brackets ``stat`` with no exec between. It also stands in
        for a process that exits meanwhile, whose argv nobody can read any more.

        An empty argv is the process's own for a kernel thread, or a live program that
        kept an empty one over every try; not for a process exiting or gone (a zombie
        has no memory left).
        """
        st = self._stat_fields()
        early = self._raw.pop("cmdline", b"")  # read before ``st``, if at all
        raw = b""
        for _ in range(_EXEC_TRIES):
            try:
                raw = self._read_cmdline()
                if raw and raw == early:
                    # the same argv before and after ``st``: no exec in between
                    return st, raw, True
                data = read_file(self._dir + "stat", until_eof=False)
            except ProcessLookupError:
                if not early:
                    raise
                return st, early, False
            flags = parse_flags(data)
            if flags & PF_KTHREAD:
                return st, raw, True
            now = parse_stat(data)
            if now.starttime != st.starttime:
                raise ProcessLookupError(errno.ESRCH, "pid reused while it was read", self._dir + "stat")
            if flags & PF_EXITING:
                # Its memory is going; a name changed since ``st`` is a program the early
                # argv was not of.
                if now.comm != st.comm:
                    self._now_stat(data, now)
                    return now, raw, False
                return st, raw or early, False
            if raw and (now.comm, now.startstack) == (st.comm, st.startstack):
                return st, raw, True
            st = now
            self._now_stat(data, now)
            early = b""
            os.sched_yield()
        return st, raw, True

    def _now_stat(self, data: bytes, st: Stat) -> None:
        """``stat`` read again found another program (it exec'd): from now on every
        value of this reading is that program's, none carried over from ``follow``'s."""
        self._stat_raw = data
        self._stat = st
        self._same = self._idle = False

    def metrics(self) -> ProcMetrics:
        """Counters and gauges: ``sample().metrics``."""
        metrics = self.sample().metrics
        assert metrics is not None
        return metrics

    def sample(self, *, full: bool = False, restat: bool = False) -> Sample:
        """Counters and gauges (``.metrics``), and what the next poll compares with.

        Reads stat, schedstat, status, io, fd (task/*/schedstat, stat and status with
        thread detail; smaps_rollup, wchan, task/*/io and task/*/wchan as the ``FS`` asks
        for them), less after :meth:`follow` (see there) unless ``full``; with
        ``restat``, ``stat`` even of a process that has not run (what changes while it
        does not: its memory, its state); a reading that finds nothing new returns the
        followed sample itself. Once per poll, for tracked processes. ``io`` or
        ``fd`` unreadable or missing: read/write bytes 0 or open fds -1, counted in
        ``partial_errors``.
        """
        if self._sample is None:
            self.proc_id()
            prev = self._prev
            if self._idle and not full and prev is not None and prev.metrics is not None:
                self._sample = self._restat(prev) if restat else prev
            else:
                last = prev
                if full or prev is None or prev.metrics is None:
                    prev = None
                self._sample = self._read(prev, restat)
                if full and last is not None and _same_reading(self._sample, last):
                    # Nothing moved: the last sample goes on, and the new one's objects are
                    # freed now rather than kept until the next full reading.
                    self._sample = last
        return self._sample

    def _read(self, prev: Sample | None, restat: bool = False) -> Sample:
        fs = self._fs
        # stat unchanged since ``prev``: its values are those of prev's metrics
        base = prev.metrics if prev is not None and self._same else None
        st: Stat | None = None
        if base is None:
            st = self._stat_fields()
            num_threads = st.num_threads
        else:
            num_threads = base.num_threads
        partial = 0
        sched = b""
        threads: dict[str, ThreadReading] | None = None
        if num_threads <= 1:
            sched = self._sched()
            ran = prev is None or prev.threads is not None or not sched or sched != prev.sched
        elif fs.thread_detail or fs.wchan:
            ran = True
            try:
                seen = self._threads(prev.threads if prev is not None else None, restat)
            except PermissionError:
                partial += 1
                seen = None
            if seen is not None:
                threads, ran = seen
        else:
            ran = True
        if not ran:
            assert prev is not None and prev.metrics is not None
            if base is None:
                assert st is not None
                return self._carried(prev, prev.metrics, st, sched, threads)
            if threads is None or threads == prev.threads:
                return prev  # nothing it shows has changed
            # only the state of a thread that has not run (``restat``)
            states = _sum_threads(threads).states or prev.metrics.states
            metrics = dataclasses.replace(prev.metrics, states=states)
            return dataclasses.replace(prev, metrics=metrics, threads=threads, reused=True)

        status = self._status_fields()  # zombies and kernel threads lack VmSwap: 0
        try:
            read_bytes, write_bytes = parse_io(self._file("io", until_eof=False))
        except PermissionError:
            read_bytes = write_bytes = 0
            partial += 1
        except ProcessLookupError as exc:
            self._missing(exc)  # e.g. a zombie without io, a kernel without task I/O stats
            read_bytes = write_bytes = 0
            partial += 1

        try:
            open_fds = count_open_fds(self._dir + "fd", size_counts=fs.is_procfs)
        except PermissionError:
            open_fds = -1
            partial += 1
        except ProcessLookupError as exc:
            self._missing(exc)
            open_fds = -1
            partial += 1

        letter = st.state if st is not None else base.state  # type: ignore[union-attr]
        tasks = _sum_threads(threads) if threads is not None else None
        if tasks is None or tasks.states is None:
            ctx_voluntary = status.ctx_voluntary
            ctx_nonvoluntary = status.ctx_nonvoluntary
            states = state_of(letter)
        else:
            states = tasks.states
            ctx_voluntary, ctx_nonvoluntary = tasks.voluntary, tasks.nonvoluntary

        extras = None
        if fs.threads or fs.smaps or fs.wchan:
            samples: tuple[ThreadSample, ...] = ()
            wchans: tuple[str, ...] = ()
            if tasks is not None:
                samples, wchans = tasks.samples, tasks.wchans
                partial += tasks.partial
            elif fs.wchan and num_threads <= 1:
                channel, bad = self._wchan()
                partial += bad
                if channel:
                    wchans = (channel,)
            pss = swap_pss = 0
            if fs.smaps:
                pss, swap_pss, bad = self._smaps()
                partial += bad
            extras = ProcExtras(pss, swap_pss, samples, wchans)

        if st is not None:
            ticks = fs.clock_ticks
            metrics = ProcMetrics(
                st.utime / ticks,
                st.stime / ticks,
                read_bytes,
                write_bytes,
                st.rss * fs.page_size,
                st.vsize,
                status.swapped_bytes,
                st.majflt,
                st.minflt,
                ctx_voluntary,
                ctx_nonvoluntary,
                st.num_threads,
                open_fds,
                states,
                partial,
                letter,
                extras,
            )
            mark = ExecMark(st.comm, st.startstack)
        else:
            assert base is not None and prev is not None
            metrics = ProcMetrics(
                base.cpu_user,
                base.cpu_system,
                read_bytes,
                write_bytes,
                base.resident_bytes,
                base.virtual_bytes,
                status.swapped_bytes,
                base.major_faults,
                base.minor_faults,
                ctx_voluntary,
                ctx_nonvoluntary,
                base.num_threads,
                open_fds,
                states,
                partial,
                letter,
                extras,
            )
            mark = prev.mark
        assert self._id is not None
        return Sample(self._id, mark, metrics, self._stat_bytes(), sched, threads)

    def _restat(self, prev: Sample) -> Sample:
        """A process that has not run since ``prev``, with ``stat`` read all the same."""
        if self._stat_bytes() == prev.stat:
            return prev
        assert prev.metrics is not None
        return self._carried(prev, prev.metrics, self._stat_fields(), prev.sched, None)

    def _carried(
        self,
        prev: Sample,
        old: ProcMetrics,
        st: Stat,
        sched: bytes,
        threads: dict[str, ThreadReading] | None,
    ) -> Sample:
        """A process that has not run since ``prev``, whose ``stat`` changed all the
        same (its pages were reclaimed, a wake-up moved its state): ``stat``'s values
        new, the rest ``prev``'s; ``status`` (and ``smaps_rollup`` when read) read again
        if its resident size moved (the pages may have gone to swap)."""
        fs = self._fs
        resident = st.rss * fs.page_size
        swapped = old.swapped_bytes
        extras = old.extras
        if resident != old.resident_bytes:
            # pages reclaimed without it running may have gone to swap
            swapped = self._status_fields().swapped_bytes
            if extras is not None and fs.smaps:
                pss, swap_pss, bad = self._smaps()
                if not bad:
                    extras = dataclasses.replace(extras, pss_bytes=pss, swap_pss_bytes=swap_pss)
        tasks = _sum_threads(threads) if threads is not None else None
        if tasks is not None and tasks.states is not None:
            states, ctx_voluntary, ctx_nonvoluntary = tasks.states, tasks.voluntary, tasks.nonvoluntary
        else:
            states = state_of(st.state)
            ctx_voluntary, ctx_nonvoluntary = old.ctx_voluntary, old.ctx_nonvoluntary
        ticks = fs.clock_ticks
        metrics = ProcMetrics(
            st.utime / ticks,
            st.stime / ticks,
            old.read_bytes,
            old.write_bytes,
            resident,
            st.vsize,
            swapped,
            st.majflt,
            st.minflt,
            ctx_voluntary,
            ctx_nonvoluntary,
            st.num_threads,
            old.open_fds,
            states,
            old.partial_errors,
            st.state,
            extras,
        )
        assert self._id is not None
        return Sample(
            self._id, ExecMark(st.comm, st.startstack), metrics, self._stat_bytes(), sched, threads, reused=True
        )

    def _sched(self) -> bytes:
        """The main thread's ``schedstat``, raw; b"" when there is none to compare
        (a kernel without it, or unreadable): the process then counts as having run.

        A run time of 0 is no comparison either: a kernel that does not keep it prints
        ``0 0 0`` for every task, and so is a child that has not run yet — which is not
        told apart from another such child at the same pid."""
        try:
            data = self._file("schedstat", until_eof=False)
        except PermissionError:
            return b""
        except ProcessLookupError as exc:
            self._missing(exc)
            return b""
        return b"" if data.startswith(b"0 ") else data

    def _wchan(self) -> tuple[str, int]:
        """The process's wait channel ("" when it does not wait in the kernel), and 1 if
        ``wchan`` could not be read."""
        try:
            return parse_wchan(self._file("wchan", until_eof=False)), 0
        except PermissionError:
            return "", 1
        except ProcessLookupError as exc:
            self._missing(exc)
            return "", 1

    def _smaps(self) -> tuple[int, int, int]:
        """Proportional resident and swapped bytes (``smaps_rollup``), and 1 if it could
        not be read."""
        try:
            # one record, made at once and far below a read's buffer: one read() is all
            pss, swap_pss = parse_smaps_rollup(self._file("smaps_rollup", until_eof=False))
        except PermissionError:
            return 0, 0, 1
        except ProcessLookupError as exc:
            # ESRCH on an open file: no memory map (a zombie, a kernel thread); ENOENT:
            # gone, or a kernel older than 4.14 (no smaps_rollup)
            if exc.errno == errno.ESRCH:
                return 0, 0, 0
            self._missing(exc)
            return 0, 0, 1
        return pss, swap_pss, 0

    def _threads(
        self, prev: Mapping[str, ThreadReading] | None, restat: bool = False
    ) -> tuple[dict[str, ThreadReading], bool] | None:
        """Every thread of ``task/`` and whether any ran since ``prev`` (or came or went).

        With thread detail, a thread whose ``schedstat`` is the same bytes as in ``prev``
        has not run: its reading is ``prev``'s (its context switches, its counters and
        wait channel when those are read), and so is its state but with ``restat`` (its
        ``stat`` is read then: a thread woken but not yet run). The others are read
        (``/proc/PID/status`` only has the main thread's context switches, hence reading
        each thread). Without thread detail only wait channels are read, every thread's
        at every poll. A thread that exits while we list is skipped. None when ``task/``
        is missing or no thread could be read: the caller then uses the main thread's
        values (as it does, counting a partial error, on ``PermissionError``).
        """
        task = self._dir + "task/"
        try:
            tids = os.listdir(task)
        except FileNotFoundError as exc:
            self._missing(ProcessLookupError(exc.errno, exc.strerror, task))
            return None
        detail = self._fs.thread_detail
        if not detail:
            prev = None  # no schedstat to compare: each thread is read
        seen: dict[str, ThreadReading] = {}
        ran = prev is None or len(tids) != len(prev)
        for tid in tids:
            prefix = task + tid + "/"
            sched = b""
            if detail:
                try:
                    sched = read_file(prefix + "schedstat", until_eof=False)
                except (ProcessLookupError, PermissionError):
                    sched = b""  # gone (the reads below tell), or nothing to compare
                if sched.startswith(b"0 "):
                    sched = b""  # never ran, or not counted (see ``_sched``)
                old = prev.get(tid) if prev is not None else None
                if old is not None and sched and sched == old.sched:
                    if restat:
                        try:
                            letter = parse_state(read_file(prefix + "stat", until_eof=False))
                        except ProcessLookupError:
                            continue
                        if letter != old.state:
                            old = old._replace(state=letter)
                    seen[tid] = old
                    continue
            ran = True
            try:
                seen[tid] = self._thread(prefix, tid, sched)
            except ProcessLookupError:
                continue
        if not seen:
            return None
        return seen, ran

    def _thread(self, prefix: str, tid: str, sched: bytes) -> ThreadReading:
        """One thread read from ``task/TID/`` (``prefix``): its state and context
        switches with thread detail, its names and counters with ``FS(threads=True)``,
        its wait channel with ``FS(wchan=True)``. Raises ``ProcessLookupError`` when it
        has gone."""
        fs = self._fs
        letter = ""
        voluntary = nonvoluntary = partial = 0
        sample: ThreadSample | None = None
        channel = ""
        if fs.thread_detail:
            raw_stat = read_file(prefix + "stat", until_eof=False)
            voluntary, nonvoluntary = parse_ctx_switches(read_file(prefix + "status", until_eof=False))
            if fs.threads:
                st = parse_stat(raw_stat)
                letter = st.state
                try:
                    io_read, io_write = parse_io(read_file(prefix + "io", until_eof=False))
                except PermissionError:
                    io_read = io_write = 0
                    partial = 1
                ticks = fs.clock_ticks
                sample = ThreadSample(
                    int(tid),
                    st.starttime,
                    st.comm,
                    st.utime / ticks,
                    st.stime / ticks,
                    io_read,
                    io_write,
                    st.majflt,
                    st.minflt,
                    voluntary,
                    nonvoluntary,
                )
            else:
                letter = parse_state(raw_stat)
        if fs.wchan:
            try:
                channel = parse_wchan(read_file(prefix + "wchan", until_eof=False))
            except PermissionError:
                partial = 1
        return ThreadReading(sched, letter, voluntary, nonvoluntary, sample, channel, partial)

    def read_argv_first(self) -> None:
        """Read ``cmdline`` now, before any other file: of a process that may exit any
        moment, the argv goes first (with its memory), while its zombie keeps ``stat``
        and the rest readable until it is reaped. ``static()`` uses this read when the
        process is exiting by the time it looks again."""
        self._raw["cmdline"] = self._read_cmdline()

    def runtime_ns(self) -> int:
        """Exact CPU time of the main thread in ns (reads ``schedstat``): the whole
        process's when it is single-threaded. For the final CPU of a process at exit,
        where ``stat``'s 10 ms ticks are too coarse."""
        return parse_schedstat(self._file("schedstat"))

    def limits(self) -> tuple[Limit, ...]:
        """Every resource limit (reads ``limits``), for a process's detail view; ``()``
        when missing while the process is still there. Raises ``PermissionError``."""
        try:
            return parse_limits(self._file("limits"))
        except ProcessLookupError as exc:
            self._missing(exc)
            return ()

    def cgroup_paths(self) -> tuple[str, ...]:
        """The cgroup path of each hierarchy (reads ``cgroup``); ``()`` when the kernel
        has none. Unlike ``static(cgroups=True)`` it reads nothing else."""
        try:
            return parse_cgroup(self._file("cgroup"))
        except ProcessLookupError as exc:
            self._missing(exc)
            return ()

    def fd_limit(self) -> int:
        """Soft limit on open files (reads ``limits``); 0 when unlimited or unknown
        (unreadable, or missing while the process is still there). Once per process."""
        if self._limit is None:
            try:
                self._limit = parse_max_open_files(self._file("limits"))
            except PermissionError:
                self._limit = 0
            except ProcessLookupError as exc:
                self._missing(exc)
                self._limit = 0
        return self._limit


def _sum_threads(threads: Mapping[str, ThreadReading]) -> _Tasks:
    """What the readings of a process's threads add up to."""
    running = sleeping = waiting = zombie = other = 0
    voluntary = nonvoluntary = partial = 0
    samples: list[ThreadSample] = []
    wchans: list[str] = []
    for t in threads.values():
        letter = t.state
        if letter:  # "" without thread detail: no state read
            if letter == "S":
                sleeping += 1
            elif letter == "R":
                running += 1
            elif letter == "D":
                waiting += 1
            elif letter == "Z":
                zombie += 1
            else:
                other += 1
            voluntary += t.ctx_voluntary
            nonvoluntary += t.ctx_nonvoluntary
        if t.detail is not None:
            samples.append(t.detail)
        if t.wchan:
            wchans.append(t.wchan)
        partial |= t.partial
    counted = running + sleeping + waiting + zombie + other
    # process-exporter reports per-thread data of processes with 2 threads or more
    return _Tasks(
        States(running, sleeping, waiting, zombie, other) if counted else None,
        voluntary,
        nonvoluntary,
        tuple(samples) if len(samples) > 1 else (),
        tuple(wchans),
        partial,
    )
