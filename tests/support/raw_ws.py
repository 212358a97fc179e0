"""A WebSocket client on a plain blocking socket, for playing clients that misbehave
(not a test module): it handshakes, sends masked text frames, and reads nothing it is
not asked to."""

from __future__ import annotations

import base64
import os
import socket
import struct

__all__ = ["handshake", "masked", "response_head", "response_line", "stalled_client"]


def handshake(query: str = "") -> bytes:
    """The opening handshake request of ``/ws?query``."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws{'?' + query if query else ''} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def masked(payload: bytes) -> bytes:
    """A client text frame (clients mask theirs)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def response_head(sock: socket.socket) -> bytes:
    """The head of the response (status line and headers), read byte by byte, so what
    follows it stays unread (``b""`` if the server closed first)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head


def response_line(sock: socket.socket) -> bytes:
    """The status line of the response (see :func:`response_head`)."""
    return response_head(sock).split(b"\r\n", 1)[0]


def stalled_client(port: int, query: str = "") -> socket.socket:
    """A WebSocket client with a 4 KiB receive buffer that reads nothing after the
    handshake: the server's writes to it back up for real. ``ConnectionRefusedError``
    with the status line when the handshake is refused."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(handshake(query))
        line = response_line(s)
    except BaseException:
        s.close()
        raise
    if not line.startswith(b"HTTP/1.1 101"):
        s.close()
        raise ConnectionRefusedError(line.decode(errors="replace") or "closed")
    return s
