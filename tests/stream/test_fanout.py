"""The one framing of a payload for every connection: it must be what websockets itself
would send (the connections write it in order with websockets' own frames: see
tests/serve/test_connections.py)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from procstream.stream.fanout import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_a_text_frame_is_the_one_websockets_builds(size: int) -> None:
    payload = bytes(b"x"[0] + i % 7 for i in range(size))
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_the_same_payload_is_framed_once_and_another_one_afresh() -> None:
    a = b'[{"type":"cycle"}]'
    first = text_frame(a)
    assert text_frame(a) is first
    b = b'[{"type":"group.update"}]'
    assert text_frame(b) == Frame(Opcode.TEXT, b).serialize(mask=False)
    assert text_frame(a) == first  # built again, still right
