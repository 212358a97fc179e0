"""The text/template subset: parsing to parts, trim markers, comments, Go value printing."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from procstream._go.template import (
    NO_VALUE,
    Field,
    TemplateError,
    go_map_string,
    go_slice_string,
    go_time_string,
    parse_template,
)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("", ()),
        ("plain", ("plain",)),
        ("}} is text", ("}} is text",)),
        ("{{.Comm}}", (Field(("Comm",)),)),
        ("{{ .Comm }}", (Field(("Comm",)),)),
        ("{{\t.PID\n}}", (Field(("PID",)),)),
        ("{{.ExeBase}}:{{.Matches.Path}}", (Field(("ExeBase",)), ":", Field(("Matches", "Path")))),
        ("a{{.Matches}}b", ("a", Field(("Matches",)), "b")),
        # trim markers eat all spaces, tabs and newlines on their side only
        ("a \t\n {{- .Comm}} b", ("a", Field(("Comm",)), " b")),
        ("a {{.Comm -}} \n b", ("a ", Field(("Comm",)), "b")),
        ("a {{- .Comm -}} b", ("a", Field(("Comm",)), "b")),
        # comments vanish; with trim markers they also trim
        ("x{{/* a comment */}}y", ("xy",)),
        ("x{{/* }} inside */}}y", ("xy",)),
        ("x {{- /* c */ -}} y", ("xy",)),
        ("x {{- /* c */}} y", ("x y",)),
        ("x{{/* multi\nline */}}y", ("xy",)),
        # text split by a comment, then trimmed by the next action, as Go lexes it
        ("a {{/* c */}} {{- .Comm}}", ("a ", Field(("Comm",)))),
    ],
)
def test_parse(text: str, parts: tuple[object, ...]) -> None:
    assert parse_template(text) == parts


def test_field_prints_like_go() -> None:
    assert str(Field(("Matches", "Path"))) == ".Matches.Path"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{{.Comm", "unclosed action '{{.Comm'"),
        ("a{{- .Comm", "unclosed action '{{- .Comm'"),
        ("{{}}", "missing value for command in {{}}"),
        ("{{  }}", "missing value for command"),
        ("{{.}}", "unsupported template action {{.}}"),
        ('{{printf "%s" .Comm}}', "unsupported template action {{printf"),
        ("{{.Comm | printf}}", "unsupported template action {{.Comm | printf}}"),
        ("{{if .Comm}}x{{end}}", "unsupported template action {{if .Comm}}"),
        ("{{range .Cgroups}}{{.}}{{end}}", "unsupported template action {{range"),
        ("{{$x := .Comm}}", "unsupported template action"),
        ("{{$.Comm}}", "unsupported template action"),
        ('{{"lit"}}', "unsupported template action"),
        ("{{.Comm .PID}}", "unsupported template action"),
        ("{{.0}}", "unsupported template action"),
        ("{{-.Comm}}", "unsupported template action"),  # "{{-" needs a space to trim
        ("{{.Comm-}}", "unsupported template action"),
        ("{{/* open", "unclosed comment"),
        ("{{/* c */ }}", "comment ends before closing delimiter"),
        ("{{ /* c */}}", "unsupported template action"),  # a comment must touch the {{
    ],
)
def test_refuses(text: str, words: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(text)
    assert words in str(info.value)


def _epoch(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        # /proc start times are boot time + ticks of 10 ms; Go drops trailing zeros
        (_epoch(2026, 11, 26, 7, 14, 26) + 0.12, "2026-11-26 07:14:26.12 +0000 UTC"),
        (_epoch(2026, 11, 26, 7, 14, 26) + 0.1, "2026-11-26 07:14:26.1 +0000 UTC"),
        (_epoch(2026, 11, 26, 7, 14, 26) + 0.01, "2026-11-26 07:14:26.01 +0000 UTC"),
        (_epoch(2026, 11, 26, 7, 14, 26) + 0.99, "2026-11-26 07:14:26.99 +0000 UTC"),
        # no fraction: no dot
        (_epoch(2026, 1, 2, 3, 4, 5), "2026-01-02 03:04:05 +0000 UTC"),
        (0.0, "1970-01-01 00:00:00 +0000 UTC"),
        (0.5, "1970-01-01 00:00:00.5 +0000 UTC"),
        (_epoch(2024, 2, 29, 23, 59, 59) + 0.123456, "2024-02-29 23:59:59.123456 +0000 UTC"),
        (-1.5, "1969-12-31 23:59:58.5 +0000 UTC"),
    ],
)
def test_go_time_string(epoch: float, text: str) -> None:
    assert go_time_string(epoch) == text


def test_go_time_string_rounds_float_noise_to_microseconds() -> None:
    # 1795681566.78 is 1795681566.7799999714 as a float
    assert go_time_string(1795681566.78).endswith(":06.78 +0000 UTC")
    assert go_time_string(1795681566.9999999) == "2026-11-26 08:26:07 +0000 UTC"


def test_go_slice_and_map_strings() -> None:
    assert go_slice_string(()) == "[]"
    assert go_slice_string(["/", "/user.slice/a b"]) == "[/ /user.slice/a b]"
    assert go_map_string({}) == "map[]"
    # Go sorts keys; "" (the whole match / unnamed groups) comes first
    assert go_map_string({"b": "2", "": "x", "A": "1"}) == "map[:x A:1 b:2]"
    assert NO_VALUE == "<no value>"
