"""The range of the numbers /proc files hold.

The kernel prints every field we read as a signed or unsigned 64-bit integer, and the
addresses and counters we use never reach 2**63. A value outside that range is not
something a kernel wrote (a crafted ``--procfs`` tree, a corrupted copy): the parsers
refuse it as garbage (``ProcfsParseError``), so it is one counted read error, never a
number that no JSON encoder or Prometheus client downstream can hold.
"""

from __future__ import annotations

from typing import Final

__all__ = ["INT64_MIN", "INT64_MAX", "in_range", "to_int"]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def in_range(values: tuple[int, ...]) -> bool:
    """True when every value fits in a signed 64-bit integer (one check for a record)."""
    return INT64_MIN <= min(values) and max(values) <= INT64_MAX


def to_int(raw: bytes) -> int:
    """``int(raw)`` limited to 64 bits; ``ValueError`` otherwise.

    ``int()`` of ``bytes`` accepts ASCII digits only (never ``'²'``), with surrounding
    whitespace and a sign.
    """
    value = int(raw)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{raw[:32]!r} is outside 64 bits")
    return value
