"""Parse ``/proc/PID/cgroup``: one ``hierarchy-id:controllers:path`` line per hierarchy.

Only the paths are kept (what process-exporter's ``{{.Cgroups}}`` template shows). A path
may itself contain ``:``, so each line is split at its first two colons only.
"""

from __future__ import annotations

from .errors import ProcfsParseError

__all__ = ["parse_cgroup"]


def parse_cgroup(data: bytes) -> tuple[str, ...]:
    """The cgroup path of each line, in file order; ``ProcfsParseError`` on a bad line."""
    paths = []
    for line in data.decode("utf-8", "replace").splitlines():
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ProcfsParseError(f"cgroup: bad line {line!r}")
        paths.append(parts[2])
    return tuple(paths)
