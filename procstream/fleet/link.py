"""One connection to NATS that reconnects by itself and says how it is.

nats-py does the reconnecting (every server of the list in turn, forever); this wraps it
with what a service needs around it:

- a state (``connecting``, ``connected``, ``disconnected``, ``closed``) and the last
  error, for ``/healthz``; an :class:`asyncio.Event` set while connected;
- one log line per change of state or of error, not one per failed attempt (a NATS
  server that is down for an hour must not fill the log);
- at start, :meth:`NatsLink.wait_connected` tells a refusal that retrying won't fix
  (credentials, TLS) from a server that is just not there yet: the first is exit 2, the
  second a warning, and the connection keeps trying in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import nats
from nats.aio.client import Client as NATS

from ..stats import Stats
from .options import NatsSettings

__all__ = ["LinkStats", "NatsLink", "NatsRefused", "fatal_reason", "stop_task"]

log = logging.getLogger("procstream.nats")

# How nats-py should keep the connection: try every server again a second after the
# last attempt, and notice a dead peer within half a minute (pings every 10 s, three
# unanswered) even when the TCP connection does not say so.
_RECONNECT_WAIT: Final = 1.0
_PING_INTERVAL: Final = 10
_MAX_PINGS_OUT: Final = 3
# Words in a server's -ERR that mean "these credentials will never do".
_REFUSALS: Final = ("authorization violation", "authentication", "user authentication expired",
                    "account authentication expired", "user authentication revoked", "secure connection")


class NatsRefused(Exception):
    """The NATS server refused us for a reason retrying won't fix (credentials, TLS)."""


@dataclass(slots=True)
class LinkStats(Stats):
    """The connection's counters; ``state`` and ``last_error`` are current values."""

    state: str = "connecting"
    connects: int = 0
    disconnects: int = 0
    errors: int = 0
    last_error: str | None = None
    server: str | None = None


def fatal_reason(exc: BaseException) -> str | None:
    """What is wrong with our credentials or TLS setup when ``exc`` says so, else None."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, nats.errors.AuthorizationError):
        return "authorization violation (check the NATS credentials)"
    text = str(exc).lower()
    for word in _REFUSALS:
        if word in text:
            return f"{str(exc).removeprefix('nats: ').strip(chr(39))} (check the NATS credentials and TLS options)"
    return None


async def stop_task(task: asyncio.Task[Any] | None, timeout: float = 1.0) -> None:
    """Cancel ``task`` and wait for it, a few times if need be: nats-py swallows a
    cancellation that lands while it flushes (``Client._flush_pending``), and the task
    then goes on to its next await."""
    for _ in range(3):
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=timeout / 3)
    if task is not None and not task.done():
        log.warning("NATS: task %s did not stop", task.get_name())


def _describe(exc: BaseException) -> str:
    text = str(exc).removeprefix("nats: ").strip("'") or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


class NatsLink:
    """A nats-py client kept connected. :meth:`start` it, use :attr:`nc` while
    :attr:`connected` is set, :meth:`close` it at the end.

    ``on_change`` is called (on the event loop) after every connect and disconnect.
    """

    def __init__(
        self,
        settings: NatsSettings,
        *,
        name: str,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.nc = NATS()
        self.stats = LinkStats()
        self.connected = asyncio.Event()
        self.fatal: str | None = None  # a refusal seen while connecting
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._said: str | None = None  # the last state or error logged
        self._first = asyncio.Event()  # connected, or refused for good, once

    @property
    def state(self) -> str:
        return self.stats.state

    def start(self) -> None:
        """Start connecting in the background (and keep reconnecting)."""
        if self._task is None:
            self._task = asyncio.create_task(self._connect(), name="procstream-nats-connect")

    async def wait_connected(self, timeout: float) -> bool:
        """True once connected, False when ``timeout`` passed first (we keep trying);
        raises :class:`NatsRefused` when the server refused our credentials or TLS."""
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), timeout)
        if self.connected.is_set():
            return True
        if self.fatal is not None:
            raise NatsRefused(self.fatal)
        return False

    async def close(self) -> None:
        """Stop reconnecting and close the connection (pending writes are flushed)."""
        self.stats.state = "closed"
        await stop_task(self._task)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.close(), 2.0)
        self.connected.clear()

    def describe(self) -> dict[str, Any]:
        """For ``/healthz``: state, server, last error."""
        st = self.stats
        return {"state": st.state, "server": st.server, "last_error": st.last_error}

    # -- nats-py callbacks -------------------------------------------------------------

    async def _connect(self) -> None:
        opts = self.settings.connect_options()
        try:
            await self.nc.connect(
                **opts,
                name=self.name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=_RECONNECT_WAIT,
                connect_timeout=self.settings.connect_timeout,
                ping_interval=_PING_INTERVAL,
                max_outstanding_pings=_MAX_PINGS_OUT,
                error_cb=self._error,
                disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
                closed_cb=self._closed,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nats-py gives up only on odd errors
            self.stats.state = "closed"
            self._error_seen(exc)
            self._first.set()
            return
        self._up()

    async def _error(self, exc: Exception) -> None:
        self._error_seen(exc)

    def _error_seen(self, exc: BaseException) -> None:
        self.stats.errors += 1
        text = _describe(exc)
        self.stats.last_error = text
        reason = fatal_reason(exc)
        if reason is not None and not self.connected.is_set():
            self.fatal = reason
            self._first.set()
        self._say(logging.WARNING, f"NATS {self.settings.where}: {text}")

    async def _disconnected(self) -> None:
        if self.stats.state == "closed":
            return
        was = self.connected.is_set()
        self.connected.clear()
        self.stats.state = "disconnected"
        if was:
            self.stats.disconnects += 1
            self._say(logging.WARNING, f"NATS: disconnected from {self.stats.server}; reconnecting")
            self._changed()

    async def _reconnected(self) -> None:
        self._up()

    async def _closed(self) -> None:
        self.connected.clear()
        if self.stats.state != "closed":
            self.stats.state = "closed"
            self._changed()

    def _up(self) -> None:
        st = self.stats
        st.state = "connected"
        st.connects += 1
        url = self.nc.connected_url
        st.server = f"{url.hostname}:{url.port}" if url is not None else None
        self.fatal = None
        self.connected.set()
        self._first.set()
        self._say(logging.INFO, f"NATS: connected to {st.server}")
        self._changed()

    def _say(self, level: int, message: str) -> None:
        if message != self._said:
            self._said = message
            log.log(level, "%s", message)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
