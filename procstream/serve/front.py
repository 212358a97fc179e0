"""What every serving command (``serve``, ``fleet``) builds from its listening options:
the address, the token and Origin guard, TLS, the memory budget, the descriptor limit,
the event loop and the log.

The options themselves are declared once (``procstream.cli``); this module turns them
into objects, refusing what can't be used before anything listens (exit code 2).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..wiring import UsageError
from .resources import MIN_MAX_MEMORY, Descriptors, MemoryBudget, MemoryGuard, fit_descriptors, parse_size
from .security import Guard, SecurityConfig, SecurityError, TlsFiles, check_exposure, check_token, install_log_redaction
from .server import ServerConfig

__all__ = ["parse_listen", "token_from", "memory_budget", "watch_memory", "Front", "event_loop_factory", "setup_logging"]

log = logging.getLogger("procstream")


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all interfaces) → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise UsageError(f"--listen {value!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"--listen {value!r}: bad port {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--listen {value!r}: port out of range")
    return host or "0.0.0.0", port


def token_from(args: argparse.Namespace) -> str | None:
    """``--token``, else ``$PROCSTREAM_TOKEN``; None when neither is set (or empty)."""
    token = args.token if args.token is not None else os.environ.get("PROCSTREAM_TOKEN")
    try:
        return check_token(token)
    except SecurityError as exc:
        raise UsageError(f"--token/PROCSTREAM_TOKEN: {exc}") from None


def memory_budget(text: str) -> MemoryBudget:
    """``--max-memory`` as a :class:`MemoryBudget`; ``UsageError`` when it is not a size
    or is below the least the service runs in."""
    try:
        total = parse_size(text)
    except ValueError as exc:
        raise UsageError(f"--max-memory: {exc}") from None
    if total < MIN_MAX_MEMORY:
        raise UsageError(f"--max-memory {text}: at least {MIN_MAX_MEMORY // (1024 * 1024)}M "
                         "(the interpreter and a host's processes alone need about half of that)")
    return MemoryBudget(total)


async def watch_memory(guard: MemoryGuard) -> None:
    """Run ``guard``'s check every second until cancelled."""
    failed = False
    while True:
        await asyncio.sleep(1.0)
        try:
            guard.check()
        except Exception:  # a bug here must not end the service
            if not failed:
                failed = True
                log.exception("memory check failed (not logged again)")


@dataclass(frozen=True, slots=True)
class Front:
    """Where and how a command listens and what it may hold: address, guard, TLS files,
    memory budget."""

    host: str
    port: int
    guard: Guard
    tls: TlsFiles | None
    #: said once listening: a non-loopback address without a token, allowed by --insecure
    exposure_warning: str | None
    budget: MemoryBudget

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Front:
        """From ``--listen``, ``--token``, ``--allow-origin``, ``--insecure``, ``--tls-*``,
        ``--max-memory``, ``--slow-client-grace``; raises
        :class:`~procstream.wiring.UsageError`."""
        host, port = parse_listen(args.listen)
        # Security first: a refusal must come before any work or listening socket.
        token = token_from(args)
        try:
            warning = check_exposure(host, port, token=token, insecure=args.insecure)
            if args.tls_key and not args.tls_cert:
                raise SecurityError("--tls-key needs --tls-cert")
            tls = TlsFiles(args.tls_cert, args.tls_key) if args.tls_cert else None
            guard = Guard(SecurityConfig(token=token, allow_origins=tuple(args.allow_origin), tls=tls is not None))
        except SecurityError as exc:
            raise UsageError(str(exc)) from None
        budget = memory_budget(args.max_memory)
        if args.slow_client_grace <= 0:
            raise UsageError("--slow-client-grace must be > 0")
        if args.buffer < 1:
            raise UsageError("--buffer must be at least 1")
        return cls(host, port, guard, tls, warning, budget)

    def server_config(self, max_clients: int) -> tuple[ServerConfig, Descriptors]:
        """The server's configuration for ``--max-clients``, with the descriptor limit
        fitted to it (call before anything listens: the clients may be lowered to fit)."""
        if max_clients < 1:
            raise UsageError("--max-clients must be at least 1")
        config = ServerConfig(
            host=self.host,
            port=self.port,
            max_clients=max_clients,
            ssl_context=self.tls.context if self.tls is not None else None,
        )
        # Every socket the server may hold, plus the reserve.
        descriptors = fit_descriptors(config.max_clients, config.descriptors - config.max_clients)
        config.max_clients = descriptors.max_clients
        return config, descriptors

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``--loop``: uvloop when asked (or ``auto`` and installed), else asyncio's."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError("--loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def setup_logging(args: argparse.Namespace) -> None:
    """``--log-level``, with the token kept out of every record."""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_level != "debug":
        # one line per HTTP request or connection is debug detail, not service news
        logging.getLogger("websockets").setLevel(logging.WARNING)
    # websockets logs request lines and headers at debug level: keep tokens out.
    install_log_redaction(token_from(args))
