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
from collections.abc import Iterator
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
from .models import ExecMark, ProcExtras, ProcId, ProcMetrics, ProcStatic, States, ThreadSample, state_of
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
    """What one walk of ``task/*`` found (see ``Proc._threads``)."""

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


class Proc:
    """One process as seen in one poll: implements ``ProcLike`` (see models.py).

    Reads lazily and caches every file's bytes and every parsed result for the life of
    the object, so ``static()`` and ``metrics()`` share one read of ``stat`` and one of
    ``status``. Make a new one (``FS.all_procs``/``FS.proc``) for the next poll.
    """

    __slots__ = (
        "_fs",
        "_pid",
        "_dir",
        "_raw",
        "_stat",
        "_status",
        "_id",
        "_static",
        "_static_cgroups",
        "_metrics",
        "_limit",
    )

    def __init__(self, fs: FS, pid: int) -> None:
        self._fs = fs
        self._pid = pid
        self._dir = f"{fs.mount_point}/{pid}/"
        self._raw: dict[str, bytes] = {}
        self._stat: Stat | None = None
        self._status: Status | None = None
        self._id: ProcId | None = None
        self._static: ProcStatic | None = None
        self._static_cgroups: ProcStatic | None = None
        self._metrics: ProcMetrics | None = None
        self._limit: int | None = None

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

    def _stat_fields(self) -> Stat:
        if self._stat is None:
            self._stat = parse_stat(self._file("stat", until_eof=False))
        return self._stat

    def _status_fields(self) -> Status:
        if self._status is None:
            self._status = parse_status(self._file("status"))
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

    def proc_id(self) -> ProcId:
        """Identity; reads only ``stat``. Call first: it is the cheapest read."""
        if self._id is None:
            self._id = ProcId(self._pid, self._stat_fields().starttime)
        return self._id

    def exec_mark(self) -> ExecMark:
        """What changes on exec; reads only ``stat`` (shared with ``proc_id``)."""
        st = self._stat_fields()
        return ExecMark(st.comm, st.startstack)

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
        before any ``stat`` (:meth:`read_argv_first`) stands in for a process that exits
        meanwhile, whose argv nobody can read any more.

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
                    self._stat = now
                    return now, raw, False
                return st, raw or early, False
            if raw and (now.comm, now.startstack) == (st.comm, st.startstack):
                return st, raw, True
            st = self._stat = now
            early = b""
            os.sched_yield()
        return st, raw, True

    def metrics(self) -> ProcMetrics:
        """Counters and gauges (reads stat, status, io, fd; task/* with thread detail).

        Once per poll, for tracked processes. ``io`` or ``fd`` unreadable or missing:
        read/write bytes 0 or open fds -1, counted in ``partial_errors``.
        """
        if self._metrics is not None:
            return self._metrics
        fs = self._fs
        st = self._stat_fields()
        status = self._status_fields()  # zombies and kernel threads lack VmSwap: 0
        partial = 0

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

        tasks = None
        if st.num_threads > 1 and (fs.thread_detail or fs.wchan):
            try:
                tasks = self._threads()
            except PermissionError:
                partial += 1
        if tasks is None or not tasks.states:
            states = state_of(st.state)
            ctx_voluntary = status.ctx_voluntary
            ctx_nonvoluntary = status.ctx_nonvoluntary
        else:
            states = tasks.states
            ctx_voluntary, ctx_nonvoluntary = tasks.voluntary, tasks.nonvoluntary

        threads: tuple[ThreadSample, ...] = ()
        wchans: tuple[str, ...] = ()
        if tasks is not None:
            threads, wchans = tasks.samples, tasks.wchans
            partial += tasks.partial
        elif fs.wchan and st.num_threads <= 1:
            try:
                channel = parse_wchan(self._file("wchan", until_eof=False))
            except PermissionError:
                channel = ""
                partial += 1
            except ProcessLookupError as exc:
                self._missing(exc)
                channel = ""
                partial += 1
            if channel:
                wchans = (channel,)

        pss = swap_pss = 0
        if fs.smaps:
            try:
                # one record, made at once and far below a read's buffer: one read() is all
                pss, swap_pss = parse_smaps_rollup(self._file("smaps_rollup", until_eof=False))
            except PermissionError:
                partial += 1
            except ProcessLookupError as exc:
                # ESRCH on an open file: no memory map (a zombie, a kernel thread); ENOENT:
                # gone, or a kernel older than 4.14 (no smaps_rollup)
                if exc.errno != errno.ESRCH:
                    self._missing(exc)
                    partial += 1

        ticks = fs.clock_ticks
        extras = None
        if fs.threads or fs.smaps or fs.wchan:
            extras = ProcExtras(pss, swap_pss, threads, wchans)
        self._metrics = ProcMetrics(
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
            st.state,
            extras,
        )
        return self._metrics

    def _threads(self) -> _Tasks | None:
        """What ``task/*`` says: thread states, context switches summed (``status`` has
        only the main thread's), and with ``FS(threads=True)``/``FS(wchan=True)`` each
        thread's sample and wait channel.

        A thread that exits while we list is skipped. None when ``task/`` is missing; no
        states when no thread could be read: the caller then uses the main thread's
        values (as it does, counting a partial error, on ``PermissionError``).
        """
        task = self._dir + "task/"
        try:
            tids = os.listdir(task)
        except FileNotFoundError as exc:
            self._missing(ProcessLookupError(exc.errno, exc.strerror, task))
            return None
        fs = self._fs
        detail, want_samples, want_wchan = fs.thread_detail, fs.threads, fs.wchan
        ticks = fs.clock_ticks
        running = sleeping = waiting = zombie = other = 0
        voluntary = nonvoluntary = 0
        partial = 0
        samples: list[ThreadSample] = []
        wchans: list[str] = []
        for tid in tids:
            prefix = task + tid + "/"
            try:
                if detail:
                    raw_stat = read_file(prefix + "stat", until_eof=False)
                    ctx = parse_ctx_switches(read_file(prefix + "status"))
                    if want_samples:
                        st = parse_stat(raw_stat)
                        letter = st.state
                    else:
                        letter = parse_state(raw_stat)
                if want_wchan:
                    try:
                        channel = parse_wchan(read_file(prefix + "wchan", until_eof=False))
                    except PermissionError:
                        channel = ""
                        partial = 1
                    if channel:
                        wchans.append(channel)
                if not detail:
                    continue
                if want_samples:
                    try:
                        io_read, io_write = parse_io(read_file(prefix + "io", until_eof=False))
                    except PermissionError:
                        io_read = io_write = 0
                        partial = 1
                    samples.append(
                        ThreadSample(
                            int(tid),
                            st.starttime,
                            st.comm,
                            st.utime / ticks,
                            st.stime / ticks,
                            io_read,
                            io_write,
                            st.majflt,
                            st.minflt,
                            ctx[0],
                            ctx[1],
                        )
                    )
            except ProcessLookupError:
                continue
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
            voluntary += ctx[0]
            nonvoluntary += ctx[1]
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
