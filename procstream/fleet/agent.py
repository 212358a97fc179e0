"""What ``serve --nats`` runs: the connection, the publisher and the state writer.

The composition root builds one :class:`NatsAgent` from the options, starts it before
the first poll (so a refusal is exit 2 before anything listens) and closes it at
shutdown, after the server (so the last events get their chance to be acknowledged).
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from .link import NatsLink, NatsRefused
from .options import NatsSettings, PublishSettings, StreamSpec, publish_settings_from, settings_from, stream_spec_from
from .publisher import BufferReader, Publisher
from .state import StateSource, StateWriter
from .stream import StreamProblem

__all__ = ["NatsAgent", "NatsStartError"]


class NatsStartError(Exception):
    """NATS refused us or the stream won't do: ``serve`` must not start (exit 2)."""


class _Hub(BufferReader, StateSource, Protocol):
    """The hub as the agent uses it."""


class NatsAgent:
    """Publishes one hub's events (and its state) to NATS JetStream."""

    def __init__(self, hub: _Hub, settings: NatsSettings, spec: StreamSpec, publish: PublishSettings) -> None:
        self.settings = settings
        self.link = NatsLink(settings, name=f"procstream {hub.host}")
        self.publisher = Publisher(hub, self.link, spec, publish)
        self.state: StateWriter | None = None
        if publish.state_interval > 0:
            self.state = StateWriter(
                hub,
                self.link,
                self.publisher.acked_position,
                bucket=publish.state_bucket,
                stream=spec.name,
                interval=publish.state_interval,
                timeout=publish.ack_timeout,
            )

    @classmethod
    def from_args(cls, hub: Any, args: argparse.Namespace) -> NatsAgent:
        """From ``serve``'s options; raises :class:`~.options.NatsConfigError`."""
        return cls(hub, settings_from(args, args.nats), stream_spec_from(args), publish_settings_from(args))

    async def start(self) -> None:
        """Connect and check the stream (waiting up to the connect timeout), then
        publish in the background; raises :class:`NatsStartError`."""
        try:
            await self.publisher.start()
        except (NatsRefused, StreamProblem) as exc:
            await self.link.close()
            raise NatsStartError(f"NATS {self.settings.where}: {exc}") from None
        if self.state is not None:
            self.state.start()

    async def close(self, timeout: float = 1.5) -> None:
        if self.state is not None:
            await self.state.close()
        await self.publisher.close(timeout)

    def health(self) -> dict[str, Any]:
        return self.publisher.health()

    def metrics(self) -> dict[str, Any]:
        out = self.publisher.metrics()
        out["state_writes"] = self.state.writes if self.state is not None else 0
        out["state_failures"] = self.state.failures if self.state is not None else 0
        return out
