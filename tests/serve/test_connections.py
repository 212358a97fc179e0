"""procstream.serve.connections.Sockets: which socket makes room when there are too many."""

from __future__ import annotations

from procstream.serve.connections import Sockets


class Conn:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_sockets_close_the_oldest_idle_one_never_one_that_sent_its_request() -> None:
    sockets = Sockets(limit=3)
    a, b, c, d, e = (Conn() for _ in range(5))
    for conn in (a, b, c):
        sockets.opened(conn)  # type: ignore[arg-type]
    sockets.requested(a)  # type: ignore[arg-type]
    sockets.opened(d)  # type: ignore[arg-type]
    assert (a.aborted, b.aborted, c.aborted) == (False, True, False)
    sockets.requested(c)  # type: ignore[arg-type]
    sockets.requested(d)  # type: ignore[arg-type]
    sockets.opened(e)  # type: ignore[arg-type]
    assert not e.aborted and sockets.stats.open == 4  # nothing idle but the newcomer
    sockets.closed(a)  # type: ignore[arg-type]
    assert sockets.stats.open == 3 and sockets.stats.idle_closed == 1
    sockets.closed(b)  # type: ignore[arg-type]  # the idle one it aborted, gone now
    assert sockets.stats.open == 3 and sockets.stats.closed == 2
