"""procstream: watch a Linux host's processes through /proc, sort them into named groups,
and stream what happens (starts, exits, group counters) as JSON over WebSockets."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
