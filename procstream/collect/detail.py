"""One tracked process in detail, read on demand: its identity, limits, cgroup and what
that tells (container, pod, systemd unit), its parent and its tracked children.

Rules:
- Only a tracked process is described (the one a viewer's user clicked): the same
  processes the stream shows, with the same redacted command line.
- Runs on the core's thread (:meth:`Core.call <procstream.collect.core.Core.call>`): it
  reads the tracker's state, which only that thread touches, and its ``/proc`` reads
  (``limits``, ``cgroup``, the parent's ``stat``) never block the event loop.
- Everything read from ``/proc`` is read now, not cached: a detail is rare, and its
  cgroup may have changed since the process was first seen (a container moves it).
"""

from __future__ import annotations

from typing import Any

from ..containers import identify
from ..events import EventBuilder
from ..grouper import Grouper
from ..procfs import FS, READ_ERRORS

__all__ = ["process_detail"]

#: Children listed at most (a fork bomb's parent has thousands).
MAX_CHILDREN = 200


def process_detail(
    fs: FS, grouper: Grouper, builder: EventBuilder, pid: int, start_time: float | None = None
) -> dict[str, Any] | None:
    """The detail of tracked process ``pid`` (of that ``start_time`` when given), or None
    when no such process is tracked (it exited, or never was)."""
    tracker = grouper.tracker
    pid_id = tracker.known(pid)
    tp = tracker.tracked.get(pid_id) if pid_id is not None else None
    if tp is None:
        return None
    identity = builder.proc_fields(tp)
    if start_time is not None and identity["start_time"] != start_time:
        return None
    proc = fs.proc(pid)
    errors: list[str] = []
    limits: list[dict[str, Any]] = []
    cgroups: tuple[str, ...] = ()
    try:
        limits = [lim._asdict() for lim in proc.limits()]
    except READ_ERRORS as exc:
        errors.append(f"limits: {type(exc).__name__}")
    try:
        cgroups = proc.cgroup_paths()
    except READ_ERRORS as exc:
        errors.append(f"cgroup: {type(exc).__name__}")

    ppid = tp.static.parent_pid
    parent: dict[str, Any] | None = None
    if ppid > 0:
        parent_id = tracker.known(ppid)
        parent_tp = tracker.tracked.get(parent_id) if parent_id is not None else None
        if parent_tp is not None:
            parent = {"pid": ppid, "name": parent_tp.static.name, "group": parent_tp.group}
        else:
            try:
                parent = {"pid": ppid, "name": fs.proc(ppid).exec_mark().comm, "group": None}
            except READ_ERRORS:
                parent = {"pid": ppid, "name": None, "group": None}  # gone since

    children = sorted(
        (c for c in tracker.tracked.values() if c.static.parent_pid == pid and c.id != tp.id),
        key=lambda c: c.id.pid,
    )
    return {
        **identity,
        "limits": limits,
        "cgroups": list(dict.fromkeys(cgroups)),  # the same path for many v1 hierarchies
        "container": identify(cgroups).as_dict(),
        "parent": parent,
        "children": [{"pid": c.id.pid, "name": c.static.name, "group": c.group} for c in children[:MAX_CHILDREN]],
        "children_total": len(children),
        "errors": errors,
    }
