"""``GET /api/proc?pid=PID[&start_time=T]``: one tracked process in detail (limits,
cgroup, container, parent, children), for the viewer's detail view.

The answer is read on demand (see :mod:`procstream.collect.detail`), never at a poll:
nobody pays for it unless somebody opens a process. 404 when the process isn't tracked
(it exited), 400 for a bad query.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.http11 import Request, Response

from .server import RouteHandler, json_response

__all__ = ["detail_route"]

Lookup = Callable[[int, "float | None"], Awaitable["dict[str, Any] | None"]]

_MAX_PID = 2**22


def _query(request: Request) -> tuple[int, float | None] | str:
    """(pid, start_time) from the query, or the error message."""
    try:
        pairs = parse_qsl(urlsplit(request.path).query, strict_parsing=False, max_num_fields=8)
    except ValueError:
        return "malformed query string"
    query = dict(pairs)
    if len(query) != len(pairs) or set(query) - {"pid", "start_time", "token"}:
        return "known parameters, once each: pid, start_time"
    raw = query.get("pid", "")
    if not raw.isdigit() or len(raw) > 8 or not 0 < int(raw) <= _MAX_PID:
        return "pid must be a process id (an integer from 1 to 4194304)"
    start: float | None = None
    if "start_time" in query:
        try:
            start = float(query["start_time"])
        except ValueError:
            return "start_time must be a number (the process's start_time, as events carry it)"
        if not 0 <= start < 1e12:
            return "start_time out of range"
    return int(raw), start


def detail_route(lookup: Lookup) -> RouteHandler:
    """The handler for ``/api/proc``; ``lookup(pid, start_time)`` gives the detail or None."""

    async def handle(request: Request) -> Response:
        parsed = _query(request)
        if isinstance(parsed, str):
            return json_response(400, {"type": "error", "error": parsed, "op": None})
        detail = await lookup(*parsed)
        if detail is None:
            return json_response(404, {"type": "error", "error": "no such tracked process", "op": None})
        return json_response(200, detail)

    return handle
