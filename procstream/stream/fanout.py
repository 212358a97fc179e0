"""What the hub's asyncio side shares: the one framing of a payload for every connection
that gets it, and the housekeeping timer.

The hub decides *what* to send; the connections (``procstream.serve.connections``)
move the bytes: the fast path writes a frame straight into a connection's transport (as
``websockets.broadcast`` does, but framed once for all the subscribers that get the same
bytes: :func:`text_frame`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

from .hub import Hub

__all__ = ["Housekeeper", "text_frame"]

log = logging.getLogger(__name__)

# The last payload framed, and its frame: a publish writes one payload to many
# connections in a row, so one entry saves all but the first framing and copy.
_last_frame: tuple[bytes, bytes] = (b"", b"\x81\x00")


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final text frame (RFC 6455 section 5.2): what a
    server sends on a connection without extensions. The same object passed again
    returns the same frame without building it again."""
    global _last_frame
    last, frame = _last_frame
    if payload is last:
        return frame
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    frame = head + payload
    _last_frame = (payload, frame)
    return frame


class Housekeeper:
    """Calls :meth:`Hub.tick` every :attr:`Hub.tick_interval` seconds (bookmarks,
    grace periods, buffer age), and gives the hub later turns of the loop for the
    checks a tick left (:meth:`Hub.on_deferred`). :meth:`start` it when serving,
    :meth:`stop` at the end."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            loop = asyncio.get_running_loop()
            self.hub.on_deferred(lambda: loop.call_soon(self._next_turn))
            self._task = loop.create_task(self._run())

    def _next_turn(self) -> None:
        try:
            self.hub.next_turn()
        except Exception:  # a bug here must not stop the next ticks' checks
            log.exception("hub housekeeping failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.hub.tick_interval)
            try:
                self.hub.tick()
            except Exception:  # a bug here must not stop bookmarks for good
                log.exception("hub housekeeping failed")
