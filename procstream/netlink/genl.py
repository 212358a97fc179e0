"""Generic netlink, as the client of one family needs it.

Generic netlink (``NETLINK_GENERIC``) carries many kernel families over one protocol. A
family's messages have its id as their netlink type, and the kernel hands ids out as
families register, so a client first asks the controller for its family's id by name
(:class:`FamilyLookup`). A message is a nlmsghdr, a genlmsghdr (command, version) and
attributes: :func:`request` and :func:`attribute` build one, :func:`attributes` reads
the attributes of an answer.
"""

from __future__ import annotations

import struct
from typing import Final, NoReturn

from .messages import NLMSG_HDRLEN, NLMSGHDR, Buffer, DecodeStats, EventsLost, MessageDecoder

__all__ = [
    "NETLINK_GENERIC",
    "GENL_ID_CTRL",
    "GENL_HDRLEN",
    "attribute",
    "attributes",
    "request",
    "FamilyLookup",
]

# linux/netlink.h, linux/genetlink.h
NETLINK_GENERIC: Final = 16
NLM_F_REQUEST: Final = 0x01
NLM_F_ACK: Final = 0x04

GENL_ID_CTRL: Final = 0x10  # the controller: the one family with a fixed id
GENL_HDRLEN: Final = 4
CTRL_CMD_NEWFAMILY: Final = 1
CTRL_CMD_GETFAMILY: Final = 3
CTRL_ATTR_FAMILY_ID: Final = 1
CTRL_ATTR_FAMILY_NAME: Final = 2

_GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved
_NLA = struct.Struct("=HH")  # len, type
_NLA_HDRLEN: Final = _NLA.size
_NLA_TYPE_MASK: Final = 0x3FFF  # the type without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_U16 = struct.Struct("=H")


def attribute(a_type: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes (NLA_ALIGN)."""
    n = _NLA_HDRLEN + len(payload)
    return _NLA.pack(n, a_type) + payload + b"\0" * (-n % 4)


def request(family: int, cmd: int, version: int, seq: int, attrs: bytes, *, ack: bool) -> bytes:
    """A request to ``family``; with ``ack`` the kernel answers it with an NLMSG_ERROR
    carrying ``seq`` and the errno (0: done), even when it succeeded."""
    body = _GENLMSGHDR.pack(cmd, version, 0) + attrs
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    return NLMSGHDR.pack(NLMSG_HDRLEN + len(body), family, flags, seq, 0) + body


def attributes(data: Buffer, start: int, end: int) -> tuple[list[tuple[int, int, int]], bool]:
    """The attributes in ``data[start:end]``, each as ``(type, payload start, payload
    end)`` with the type's flag bits cleared; and whether they were all well formed. An
    attribute whose length does not fit ends the list (False): nothing after it can be
    located."""
    found: list[tuple[int, int, int]] = []
    pos = start
    while pos + _NLA_HDRLEN <= end:
        a_len, a_type = _NLA.unpack_from(data, pos)
        if a_len < _NLA_HDRLEN or pos + a_len > end:
            return found, False
        found.append((a_type & _NLA_TYPE_MASK, pos + _NLA_HDRLEN, pos + a_len))
        pos += (a_len + 3) & ~3  # NLA_ALIGN
    return found, True


class FamilyLookup(MessageDecoder[NoReturn]):
    """Asks the controller for a family's id by name.

    Send :attr:`request`, then read the answers with this decoder until the NLMSG_ERROR
    for :attr:`seq` arrives (it follows the reply): :attr:`family` is then the id, or
    None if the reply held none. Anything else that arrives is counted as foreign.
    """

    __slots__ = ("seq", "request", "family")

    def __init__(self, name: str, seq: int, stats: DecodeStats) -> None:
        super().__init__(stats)
        self.seq = seq
        self.request = request(
            GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, seq,
            attribute(CTRL_ATTR_FAMILY_NAME, name.encode("ascii") + b"\0"), ack=True,
        )  # fmt: skip
        self.family: int | None = None

    def _message(
        self, data: Buffer, off: int, end: int, nl_type: int, nl_seq: int, out: list[EventsLost]
    ) -> None:
        if nl_type != GENL_ID_CTRL or nl_seq != self.seq:
            self.stats.foreign += 1
            return
        start = off + NLMSG_HDRLEN
        if end - start < GENL_HDRLEN or data[start] != CTRL_CMD_NEWFAMILY:
            self.stats.ignored += 1
            return
        attrs, _ = attributes(data, start + GENL_HDRLEN, end)
        for a_type, a_start, a_end in attrs:
            if a_type == CTRL_ATTR_FAMILY_ID and a_end - a_start >= _U16.size:
                self.family = _U16.unpack_from(data, a_start)[0]
                return
