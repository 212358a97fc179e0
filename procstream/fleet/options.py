"""The NATS options of ``serve --nats``, ``fleet`` and ``tail nats://…``, and what they
turn into.

Secrets: a password or token on the command line is visible to every local user
(``ps``), so both also come from the environment (``PROCSTREAM_NATS_PASSWORD``,
``PROCSTREAM_NATS_TOKEN``); a creds or NKey seed file is better still. Files are checked
when the options are read, so a typo is exit 2 at start, not a retry loop later.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import ssl
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from .subjects import DEFAULT_STATE_BUCKET, DEFAULT_STREAM, MIN_DUPLICATE_WINDOW, check_name

__all__ = [
    "NatsConfigError",
    "NatsSettings",
    "StreamSpec",
    "PublishSettings",
    "add_connection_arguments",
    "add_publish_arguments",
    "add_fleet_arguments",
    "FleetSettings",
    "fleet_settings_from",
    "settings_from",
    "stream_spec_from",
    "publish_settings_from",
    "parse_duration",
    "parse_size",
    "split_urls",
]

PASSWORD_ENV: Final = "PROCSTREAM_NATS_PASSWORD"
TOKEN_ENV: Final = "PROCSTREAM_NATS_TOKEN"
_SCHEMES: Final = ("nats", "tls")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class NatsConfigError(ValueError):
    """The NATS options can't work (bad URL, unreadable file, bad value): exit 2."""


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """How to reach NATS: servers and credentials."""

    servers: tuple[str, ...]
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkey: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 5.0

    @property
    def where(self) -> str:
        """The servers for messages: without any credentials a URL carries."""
        return ",".join(_without_credentials(u) for u in self.servers)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for nats-py's ``connect`` (credentials and TLS)."""
        opts: dict[str, Any] = {"servers": list(self.servers)}
        if self.user is not None:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        if self.token is not None:
            opts["token"] = self.token
        if self.creds is not None:
            opts["user_credentials"] = self.creds
        if self.nkey is not None:
            opts["nkeys_seed"] = self.nkey
        context = self.tls_context()
        if context is not None:
            opts["tls"] = context
        return opts

    def tls_context(self) -> ssl.SSLContext | None:
        """A client TLS context when any TLS option (or a ``tls://`` URL) asks for one."""
        wanted = self.tls_ca or self.tls_cert or any(u.startswith("tls://") for u in self.servers)
        if not wanted:
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise NatsConfigError(f"NATS TLS files: {exc}") from None
        return context


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The JetStream stream ``serve`` creates when it is missing (and checks when not)."""

    name: str = DEFAULT_STREAM
    max_age: float = 86400.0  # seconds, 0 = no limit
    max_bytes: int = 1 << 30  # -1 = no limit
    replicas: int = 1
    duplicate_window: float = MIN_DUPLICATE_WINDOW


@dataclass(frozen=True, slots=True)
class PublishSettings:
    """How ``serve`` publishes."""

    max_inflight: int = 1000
    ack_timeout: float = 5.0
    state_bucket: str = DEFAULT_STATE_BUCKET
    state_interval: float = 10.0  # seconds, 0 = don't publish the host's state


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """How ``fleet`` reads the stream."""

    stream: str = DEFAULT_STREAM
    state_bucket: str = DEFAULT_STATE_BUCKET
    host_timeout: float | None = None  # None: 3 host intervals, at least 15 s


def split_urls(values: str | list[str]) -> tuple[str, ...]:
    """Comma-separated server URLs, checked: ``nats://`` or ``tls://`` (the scheme may
    be left out), a host, an optional port."""
    if isinstance(values, str):
        values = [values]
    urls: list[str] = []
    for value in values:
        for raw in value.split(","):
            url = raw.strip()
            if not url:
                continue
            if "://" not in url:
                url = "nats://" + url
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError as exc:
                raise NatsConfigError(f"NATS URL {_without_credentials(url)!r}: {exc}") from None
            if parts.scheme not in _SCHEMES:
                raise NatsConfigError(
                    f"NATS URL {_without_credentials(url)!r}: scheme {parts.scheme!r} "
                    f"(use nats:// or tls://)"
                )
            if not parts.hostname or (parts.path not in ("", "/")) or parts.query:
                raise NatsConfigError(f"NATS URL {_without_credentials(url)!r}: expected nats://HOST[:PORT]")
            if port == 0:
                raise NatsConfigError(f"NATS URL {_without_credentials(url)!r}: port 0")
            urls.append(url)
    if not urls:
        raise NatsConfigError("no NATS server URL given")
    return tuple(urls)


def _without_credentials(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.rpartition("@")[2]
    return f"{scheme}://{rest.rpartition('@')[2]}"


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise ValueError(f"bad duration {text!r} (e.g. 90s, 15m, 24h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_size(text: str) -> int:
    """``1048576``, ``512M``, ``1G`` (binary units) → bytes; ``0`` means no limit (-1)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ValueError(f"bad size {text!r} (e.g. 512M, 1G)")
    n = int(m.group(1)) * _SIZES[m.group(2)]
    return n if n > 0 else -1


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_connection_arguments(group: argparse._ActionsContainer) -> None:
    """Credentials, TLS and the stream's name: what every NATS client of ours needs."""
    group.add_argument("--nats-user", metavar="USER", help="NATS user name (password: --nats-password or $PROCSTREAM_NATS_PASSWORD)")
    group.add_argument("--nats-password", metavar="PASSWORD", help=f"NATS password; default ${PASSWORD_ENV} (prefer it: command lines are public)")
    group.add_argument("--nats-token", metavar="TOKEN", help=f"NATS authentication token; default ${TOKEN_ENV}")
    group.add_argument("--nats-creds", metavar="FILE", help="NATS credentials file (user JWT and NKey seed)")
    group.add_argument("--nats-nkey", metavar="FILE", help="NATS NKey seed file")
    group.add_argument("--nats-tls-ca", metavar="FILE", help="verify the NATS server with this CA bundle (PEM); implies TLS")
    group.add_argument("--nats-tls-cert", metavar="FILE", help="client certificate (PEM) for NATS TLS; implies TLS")
    group.add_argument("--nats-tls-key", metavar="FILE", help="the private key of --nats-tls-cert (default: in that file)")
    group.add_argument("--nats-connect-timeout", type=_duration, default=5.0, metavar="S",
                       help="how long to wait for NATS at start before carrying on without it (default: 5)")
    group.add_argument("--nats-stream", default=DEFAULT_STREAM, metavar="NAME",
                       help=f"JetStream stream (default: {DEFAULT_STREAM})")


def add_publish_arguments(group: argparse._ActionsContainer) -> None:
    """``serve``'s NATS options: where to publish, the stream it creates, the pace."""
    group.add_argument("--nats", action="append", metavar="URL[,URL…]",
                       help="publish every event to NATS JetStream at these servers (nats://HOST:PORT or tls://…)")
    add_connection_arguments(group)
    group.add_argument("--nats-max-age", type=_duration, default=86400.0, metavar="DURATION",
                       help="when creating the stream: keep events this long (default: 24h; 0 = no limit)")
    group.add_argument("--nats-max-bytes", type=_size, default=1 << 30, metavar="SIZE",
                       help="when creating the stream: keep at most this much, oldest dropped first (default: 1G; 0 = no limit)")
    group.add_argument("--nats-replicas", type=int, default=1, metavar="N",
                       help="when creating the stream: copies in a JetStream cluster (default: 1)")
    group.add_argument("--nats-duplicate-window", type=_duration, default=MIN_DUPLICATE_WINDOW, metavar="DURATION",
                       help="when creating the stream: a resent event is stored once within this window "
                            f"(default and minimum: {MIN_DUPLICATE_WINDOW:g}s)")
    group.add_argument("--nats-max-inflight", type=int, default=1000, metavar="N",
                       help="events sent but not yet acknowledged, at most (default: 1000)")
    group.add_argument("--nats-ack-timeout", type=_duration, default=5.0, metavar="S",
                       help="resend what JetStream has not acknowledged after S seconds (default: 5)")
    group.add_argument("--nats-state-bucket", default=DEFAULT_STATE_BUCKET, metavar="NAME",
                       help=f"key-value bucket for the host's latest state (default: {DEFAULT_STATE_BUCKET})")
    group.add_argument("--nats-state-interval", type=_duration, default=10.0, metavar="S",
                       help="publish the host's state at most every S seconds when it changed (default: 10; 0 = never)")


def add_fleet_arguments(group: argparse._ActionsContainer) -> None:
    """``fleet``'s NATS options: where the stream is, how hosts are judged."""
    group.add_argument("--nats", action="append", required=True, metavar="URL[,URL…]",
                       help="read the stream from these NATS servers (nats://HOST:PORT or tls://…)")
    add_connection_arguments(group)
    group.add_argument("--nats-state-bucket", default=DEFAULT_STATE_BUCKET, metavar="NAME",
                       help=f"key-value bucket of the hosts' latest states (default: {DEFAULT_STATE_BUCKET})")
    group.add_argument("--host-timeout", type=_duration, default=None, metavar="S",
                       help="a host silent this long is down (default: 3 of its poll intervals, at least 15 s)")


def _name(option: str, value: str) -> None:
    try:
        check_name(option, value)
    except ValueError as exc:
        raise NatsConfigError(str(exc)) from None


def _readable(option: str, path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise NatsConfigError(f"{option} {path}: {exc.strerror or exc}") from None
    return path


def settings_from(args: argparse.Namespace, urls: str | list[str]) -> NatsSettings:
    """The connection settings the options ask for; raises :class:`NatsConfigError`."""
    servers = split_urls(urls)
    password = args.nats_password if args.nats_password is not None else os.environ.get(PASSWORD_ENV)
    token = args.nats_token if args.nats_token is not None else os.environ.get(TOKEN_ENV)
    if password and args.nats_user is None:
        raise NatsConfigError(f"--nats-password/${PASSWORD_ENV} needs --nats-user")
    if args.nats_tls_key and not args.nats_tls_cert:
        raise NatsConfigError("--nats-tls-key needs --nats-tls-cert")
    if (args.nats_creds or args.nats_nkey) and importlib.util.find_spec("nkeys") is None:
        # a dependency of procstream (nats-py's extra); missing only from a broken install
        raise NatsConfigError("--nats-creds/--nats-nkey need the nkeys package (pip install 'nats-py[nkeys]')")
    if args.nats_creds and args.nats_nkey:
        raise NatsConfigError("--nats-creds and --nats-nkey: use one (a creds file holds its own NKey)")
    if args.nats_connect_timeout <= 0:
        raise NatsConfigError("--nats-connect-timeout must be > 0")
    _name("--nats-stream", args.nats_stream)
    settings = NatsSettings(
        servers=servers,
        user=args.nats_user,
        password=password or None,
        token=token or None,
        creds=_readable("--nats-creds", args.nats_creds),
        nkey=_readable("--nats-nkey", args.nats_nkey),
        tls_ca=_readable("--nats-tls-ca", args.nats_tls_ca),
        tls_cert=_readable("--nats-tls-cert", args.nats_tls_cert),
        tls_key=_readable("--nats-tls-key", args.nats_tls_key),
        connect_timeout=args.nats_connect_timeout,
    )
    settings.tls_context()  # a bad certificate or key is a start-up error
    return settings


def fleet_settings_from(args: argparse.Namespace) -> FleetSettings:
    _name("--nats-state-bucket", args.nats_state_bucket)
    if args.host_timeout is not None and args.host_timeout <= 0:
        raise NatsConfigError("--host-timeout must be > 0")
    return FleetSettings(stream=args.nats_stream, state_bucket=args.nats_state_bucket,
                         host_timeout=args.host_timeout)


def stream_spec_from(args: argparse.Namespace) -> StreamSpec:
    if args.nats_replicas < 1 or args.nats_replicas > 5:
        raise NatsConfigError("--nats-replicas must be 1 to 5 (JetStream's limit)")
    if args.nats_duplicate_window < MIN_DUPLICATE_WINDOW:
        raise NatsConfigError(f"--nats-duplicate-window must be at least {MIN_DUPLICATE_WINDOW:g}s")
    if 0 < args.nats_max_age < args.nats_duplicate_window:
        raise NatsConfigError("--nats-max-age must be longer than --nats-duplicate-window")
    return StreamSpec(
        name=args.nats_stream,
        max_age=args.nats_max_age,
        max_bytes=args.nats_max_bytes,
        replicas=args.nats_replicas,
        duplicate_window=args.nats_duplicate_window,
    )


def publish_settings_from(args: argparse.Namespace) -> PublishSettings:
    if args.nats_max_inflight < 1:
        raise NatsConfigError("--nats-max-inflight must be at least 1")
    if args.nats_ack_timeout <= 0:
        raise NatsConfigError("--nats-ack-timeout must be > 0")
    _name("--nats-state-bucket", args.nats_state_bucket)
    return PublishSettings(
        max_inflight=args.nats_max_inflight,
        ack_timeout=args.nats_ack_timeout,
        state_bucket=args.nats_state_bucket,
        state_interval=args.nats_state_interval,
    )
