"""The subset of Go's text/template that process-exporter's ``name`` templates use.

A template is parsed once into a tuple of parts: literal text (``str``) and field
references (``Field``, e.g. ``.Matches.Path``). Trim markers (``{{-``, ``-}}``) and comments
(``{{/* ... */}}``) are resolved at parse time, so rendering is a join. Anything else Go
templates can do (pipelines, functions, ``if``/``range``, variables, constants) raises
``TemplateError`` -- naming processes needs none of it, and refusing beats guessing.

Which fields exist is not this module's business: the caller (``config.py``) checks the
``Field`` paths against the process attributes it offers.

This module also prints values the way Go's ``fmt.Fprint`` does inside a template, so
names come out byte-for-byte as process-exporter's: ``go_time_string`` (``time.Time``),
``go_slice_string`` (``[]string``), ``go_map_string`` (``map[string]string``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = [
    "Field",
    "Part",
    "TemplateError",
    "parse_template",
    "go_time_string",
    "go_slice_string",
    "go_map_string",
    "NO_VALUE",
]

#: what Go prints for a missing map key
NO_VALUE = "<no value>"

# Go's text/template treats exactly these as spaces (around trim markers, inside actions)
_SPACE = " \t\r\n"
_FIELD_CHAIN = re.compile(r"(?:\.[^\W\d]\w*)+")


class TemplateError(ValueError):
    """The template is not valid Go, or uses more of text/template than we support."""


@dataclass(frozen=True, slots=True)
class Field:
    """``{{.A.B}}`` -- a chain of field (or map key) names, here ``("A", "B")``."""

    path: tuple[str, ...]

    def __str__(self) -> str:
        return "." + ".".join(self.path)


Part = str | Field


def _action_end(text: str, open_at: int, body_start: int) -> int:
    """Index of the ``}}`` closing the action opened at ``open_at``."""
    end = text.find("}}", body_start)
    if end < 0:
        raise TemplateError(f"unclosed action {_excerpt(text[open_at:])}")
    return end


def _excerpt(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_template(text: str) -> tuple[Part, ...]:
    """Parse ``text`` (call once, at config load). Adjacent literals are merged and
    empty ones dropped, so a template without actions is a single ``str``."""
    parts: list[Part] = []
    pos = 0
    trim_next = False  # the previous action ended with "-}}"
    while True:
        start = text.find("{{", pos)
        literal = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            literal = literal.lstrip(_SPACE)
        body_start = start + 2
        left_trim = start >= 0 and len(text) > body_start + 1 and text[body_start] == "-" and text[body_start + 1] in _SPACE
        if left_trim:
            literal = literal.rstrip(_SPACE)
            body_start += 2
        if literal:
            if parts and isinstance(parts[-1], str):
                parts[-1] += literal
            else:
                parts.append(literal)
        if start < 0:
            return tuple(parts)
        if text.startswith("/*", body_start):
            pos, trim_next = _comment(text, body_start)
            continue
        end = _action_end(text, start, body_start)
        body = text[body_start:end]
        trim_next = len(body) >= 2 and body[-1] == "-" and body[-2] in _SPACE
        if trim_next:
            body = body[:-2]
        parts.append(_action(body, text[start : end + 2]))
        pos = end + 2


def _comment(text: str, start: int) -> tuple[int, bool]:
    """Skip ``/* ... */`` at ``start``; it must end the action. Returns (next pos, trim)."""
    close = text.find("*/", start + 2)
    if close < 0:
        raise TemplateError("unclosed comment")
    after = close + 2
    if text.startswith("}}", after):
        return after + 2, False
    if len(text) > after + 1 and text[after] in _SPACE and text.startswith("-}}", after + 1):
        return after + 4, True
    raise TemplateError("comment ends before closing delimiter")


def _action(body: str, whole: str) -> Field:
    stripped = body.strip(_SPACE)
    if not stripped:
        raise TemplateError(f"missing value for command in {whole}")
    if _FIELD_CHAIN.fullmatch(stripped) is None:
        raise TemplateError(
            f"unsupported template action {whole} (only fields like {{{{.Comm}}}} "
            "and {{.Matches.NAME}} are supported)"
        )
    return Field(tuple(stripped[1:].split(".")))


# -- printing values as Go does -------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def go_time_string(epoch_seconds: float) -> str:
    """Go's ``time.Time.String()`` of a UTC time: ``2026-11-26 07:14:26.12 +0000 UTC``.

    The fraction drops its trailing zeros, and the dot too when it is zero. A float epoch
    carries about a microsecond of precision, so we round there: /proc start times are
    whole clock ticks (10 ms), which then print exactly as Go prints them."""
    micros = round(epoch_seconds * 1_000_000)
    seconds, frac = divmod(micros, 1_000_000)
    dt = _EPOCH + timedelta(seconds=seconds)
    out = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )
    if frac:
        out += "." + f"{frac:06d}".rstrip("0")
    return out + " +0000 UTC"


def go_slice_string(items: Iterable[str]) -> str:
    """Go's ``%v`` of a ``[]string``: ``[a b c]`` (no quoting, so spaces are ambiguous)."""
    return "[" + " ".join(items) + "]"


def go_map_string(mapping: Mapping[str, str]) -> str:
    """Go's ``%v`` of a ``map[string]string``: ``map[k1:v1 k2:v2]``, keys sorted."""
    return "map[" + " ".join(f"{k}:{mapping[k]}" for k in sorted(mapping)) + "]"
