"""``FS`` (a /proc mount point) and ``Proc`` (one process, read lazily for one poll).

This is the layer that decides which files a question needs and what a failure means;
the parser modules only turn bytes into values. Rules (see also ``errors.py``):

- ``stat``, ``status`` and ``cmdline`` are required: if one is missing the process has
  gone (``ProcessLookupError``), if unreadable ``PermissionError``.
- ``io``, ``fd``, ``task/`` (and ``cgroup``, ``limits``) are optional: unreadable
  (``io`` and ``fd`` are owner-only) or missing while the process is still there, their
  values fall back to a default (0 bytes, -1 fds, leader-only thread data) and
  ``ProcMetrics.partial_errors`` counts them. Missing *because the process has gone* is
  still ``ProcessLookupError``: after an ENOENT we look whether ``stat`` is still there.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
import stat as _stat_mod
from collections.abc import Iterator, Mapping

from ._read import read_file
from .boot import parse_btime
from .cgroup import parse_cgroup
from .cmdline import parse_cmdline
from .errors import ProcfsError, ProcfsParseError
from .fd import count_open_fds
from .io import parse_io
from .limits import parse_max_open_files
from .models import ExecMark, ProcId, ProcMetrics, ProcStatic, Sample, States, ThreadSample, state_of
from .schedstat import parse_schedstat
from .stat import PF_EXITING, PF_KTHREAD, Stat, parse_flags, parse_stat, parse_state
from .status import Status, parse_ctx_switches, parse_status

__all__ = ["FS", "Proc"]


class FS:
    """A procfs mount point (``/proc``, a host's ``/proc`` bind-mounted elsewhere, or a
    fake tree laid out like it). Create once; it reads ``{mount_point}/stat`` for the
    boot time and fails early with ``ProcfsError`` if that is impossible.

    ``thread_detail``: count thread states and sum context switches over every thread
    (``task/*/stat`` and ``task/*/status``, two extra reads per thread) as
    process-exporter does; off, only the main thread's are used.
    """

    def __init__(
        self, mount_point: str | os.PathLike[str] = "/proc", *, thread_detail: bool = True
    ) -> None:
        self.mount_point: str = os.fspath(mount_point)
        self.thread_detail: bool = thread_detail
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
        return f"FS({self.mount_point!r}, thread_detail={self.thread_detail})"

    def all_procs(self) -> Iterator[Proc]:
        """A ``Proc`` for every process (numeric entry) of the mount point, pid order.

        Call once per poll. The directory is listed here, eagerly: a failure raises
        ``ProcfsError`` from this call, not from the first ``next()``. Processes are not
        read until asked; one that exits meanwhile raises ``ProcessLookupError`` then.
        """
        try:
            names = os.listdir(self.mount_point)
        except OSError as exc:
            raise ProcfsError(
                exc.errno, f"cannot list processes ({exc.strerror})", self.mount_point
            ) from exc
        pids = sorted(int(name) for name in names if name.isdigit())
        return (Proc(self, pid) for pid in pids)

    def proc(self, pid: int) -> Proc:
        """The process ``pid``; nothing is read (or checked) until a method asks."""
        return Proc(self, pid)


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

    def _file(self, name: str, until_eof: bool = True) -> bytes:
        data = self._raw.get(name)
        if data is None:
            data = self._raw[name] = read_file(self._dir + name, until_eof=until_eof)
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
          ``schedstat``; only threads that ran have their ``stat`` and ``status`` read,
          and when none ran (and none came or went), ``io``, ``status`` and ``fd`` are
          ``prev``'s. Its own ``stat`` is read at every poll.
        - Without a usable ``schedstat`` (missing, unreadable), or multi-threaded
          without ``thread_detail``, every file is read.

        ``schedstat`` is read before the files it stands for: a run after it moves it
        by the next poll, a run before it shows in those files. What can change while a
        process does not run is not seen this way: its resident size and swap when its
        pages are reclaimed, its state when it is woken but has not run yet, its
        descriptors when another process sharing its descriptor table opens files.
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

        ``cgroups=True`` also reads ``cgroup`` (``()`` if the kernel has none).
        """
        if self._static is None:
            fs = self._fs
            st = self._stat_fields()
            # empty for kernel threads and zombies (the file exists but is empty)
            argv = parse_cmdline(self._file("cmdline"))
            self._static = ProcStatic(
                st.comm,
                argv,
                st.ppid,
                fs.boot_time_precise + st.starttime / fs.clock_ticks,
                self._status_fields().uid,
                cmdline_known=bool(argv) or self._argv_was_there(),
            )
        if not cgroups:
            return self._static
        if self._static_cgroups is None:
            try:
                paths = parse_cgroup(self._file("cgroup"))
            except ProcessLookupError as exc:
                self._missing(exc)
                paths = ()
            base = self._static
            self._static_cgroups = ProcStatic(
                base.name, base.cmdline, base.parent_pid, base.start_time, base.uid, paths, base.cmdline_known
            )
        return self._static_cgroups

    def _argv_was_there(self) -> bool:
        """For an empty ``cmdline``: is that the process's own (a kernel thread, or a
        program run with no arguments at all) rather than a process already gone from
        its memory (exiting, or a zombie), whose argv nobody can read any more?

        Asks a fresh ``stat``, read after ``cmdline``: the one read before may predate
        the exit that emptied it.
        """
        try:
            data = read_file(self._dir + "stat", until_eof=False)
        except ProcessLookupError:
            return False
        flags = parse_flags(data)
        return bool(flags & PF_KTHREAD) or not flags & PF_EXITING

    def metrics(self) -> ProcMetrics:
        """Counters and gauges: ``sample().metrics``."""
        metrics = self.sample().metrics
        assert metrics is not None
        return metrics

    def sample(self, *, full: bool = False, restat: bool = False) -> Sample:
        """Counters and gauges (``.metrics``), and what the next poll compares with.

        Reads stat, schedstat, status, io, fd (task/*/schedstat, stat and status with
        thread detail), less after :meth:`follow` (see there) unless ``full``; with
        ``restat``, ``stat`` even of a process that has not run (what changes while it
        does not: its memory, its state). Once per poll, for tracked processes. ``io`` or
        ``fd`` unreadable or missing: read/write bytes 0 or open fds -1, counted in
        ``partial_errors``.
        """
        if self._sample is None:
            self.proc_id()
            prev = self._prev
            if self._idle and not full and prev is not None and prev.metrics is not None:
                self._sample = self._restat(prev) if restat else prev
            else:
                if full or prev is None or prev.metrics is None:
                    prev = None
                self._sample = self._read(prev, restat)
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
        threads: dict[str, ThreadSample] | None = None
        if num_threads == 1:
            sched = self._sched()
            ran = prev is None or prev.threads is not None or not sched or sched != prev.sched
        elif fs.thread_detail:
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
            states = _sum_threads(threads)[0]
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

        if threads is not None:
            states, ctx_voluntary, ctx_nonvoluntary = _sum_threads(threads)
        else:
            ctx_voluntary = status.ctx_voluntary
            ctx_nonvoluntary = status.ctx_nonvoluntary
            states = state_of(st.state) if st is not None else base.states  # type: ignore[union-attr]

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
        threads: dict[str, ThreadSample] | None,
    ) -> Sample:
        """A process that has not run since ``prev``, whose ``stat`` changed all the
        same (its pages were reclaimed, a wake-up moved its state): ``stat``'s values
        new, the rest ``prev``'s; ``status`` read again if its resident size moved (the
        pages may have gone to swap)."""
        fs = self._fs
        resident = st.rss * fs.page_size
        swapped = old.swapped_bytes
        if resident != old.resident_bytes:
            # pages reclaimed without it running may have gone to swap
            swapped = self._status_fields().swapped_bytes
        if threads is not None:
            states, ctx_voluntary, ctx_nonvoluntary = _sum_threads(threads)
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

    def _threads(
        self, prev: Mapping[str, ThreadSample] | None, restat: bool = False
    ) -> tuple[dict[str, ThreadSample], bool] | None:
        """Every thread of ``task/`` and whether any ran since ``prev`` (or came or went).

        A thread whose ``schedstat`` is the same bytes as in ``prev`` has not run: its
        context switches are ``prev``'s, and so is its state but with ``restat`` (its
        ``stat`` is read then: a thread woken but not yet run). The others' ``stat`` and
        ``status`` are read (``/proc/PID/status`` only has the main thread's context
        switches, hence reading each thread). A thread that exits while we list is
        skipped. None when ``task/`` is missing or no thread could be read: the caller
        then uses the main thread's values (as it does, counting a partial error, on
        ``PermissionError``).
        """
        task = self._dir + "task/"
        try:
            tids = os.listdir(task)
        except FileNotFoundError as exc:
            self._missing(ProcessLookupError(exc.errno, exc.strerror, task))
            return None
        seen: dict[str, ThreadSample] = {}
        ran = prev is None or len(tids) != len(prev)
        for tid in tids:
            prefix = task + tid + "/"
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
                letter = parse_state(read_file(prefix + "stat", until_eof=False))
                voluntary, nonvoluntary = parse_ctx_switches(read_file(prefix + "status", until_eof=False))
            except ProcessLookupError:
                continue
            seen[tid] = ThreadSample(sched, letter, voluntary, nonvoluntary)
        if not seen:
            return None
        return seen, ran

    def read_argv_first(self) -> None:
        """Read ``cmdline`` now, before any other file: of a process that may exit any
        moment, the argv goes first (with its memory), while its zombie keeps ``stat``
        and the rest readable until it is reaped. ``static()`` then uses this read."""
        self._file("cmdline")

    def runtime_ns(self) -> int:
        """Exact CPU time of the main thread in ns (reads ``schedstat``): the whole
        process's when it is single-threaded. For the final CPU of a process at exit,
        where ``stat``'s 10 ms ticks are too coarse."""
        return parse_schedstat(self._file("schedstat"))

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


def _sum_threads(threads: Mapping[str, ThreadSample]) -> tuple[States, int, int]:
    """(states, voluntary, nonvoluntary context switches) over the threads."""
    running = sleeping = waiting = zombie = other = 0
    voluntary = nonvoluntary = 0
    for t in threads.values():
        letter = t.state
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
    return States(running, sleeping, waiting, zombie, other), voluntary, nonvoluntary
