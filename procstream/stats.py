"""The one shape of the service's counters (``/metrics``, ``/healthz``, tests).

Each part of the service that counts things keeps its counters in one ``Stats`` subclass
declared ``@dataclass(slots=True)`` and exposes it as an attribute (``hub.stats``,
``poller.status``, ...): plain fields that its owner updates and that ``/metrics`` reads.
A field updated from more than one thread is split into one field per thread (a ``+=``
from two threads can lose a count), and the total is a property.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Stats"]


class Stats:
    """Base of the counter dataclasses: adds :meth:`as_dict`, no fields of its own."""

    __slots__ = ()

    def as_dict(self) -> dict[str, Any]:
        """A copy of every field (dict fields copied too, so the copy stays as it is)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, dict) else value
        return out
