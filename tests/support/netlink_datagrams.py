"""Netlink datagrams built by hand, the way the kernel lays them out (not a test module).

Written from the kernel's headers, independently of procstream.netlink's own structs, so
that a wrong offset in the package shows up as a failing test instead of agreeing with
itself.
"""

from __future__ import annotations

import struct

__all__ = [
    "NLMSG_NOOP",
    "NLMSG_ERROR",
    "NLMSG_DONE",
    "NLMSG_OVERRUN",
    "NLA_F_NESTED",
    "nlmsg",
    "nlerr",
    "nla",
    "genl",
]

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLA_F_NESTED = 0x8000


def nlmsg(payload: bytes, type_: int = NLMSG_DONE, seq: int = 0) -> bytes:
    """nlmsghdr + payload, padded to 4 bytes like NLMSG_ALIGN."""
    body = struct.pack("=IHHII", 16 + len(payload), type_, 0, seq, 0) + payload
    return body + b"\0" * (-len(body) % 4)


def nlerr(err: int, seq: int = 0) -> bytes:
    """The kernel's NLMSG_ERROR answer to request ``seq``: ``-err``, then the request's
    header (0: an acknowledgement)."""
    return nlmsg(struct.pack("=i", -err) + struct.pack("=IHHII", 36, 0x10, 5, seq, 9), NLMSG_ERROR, seq)


def nla(a_type: int, payload: bytes) -> bytes:
    """A netlink attribute, padded to 4 bytes like NLA_ALIGN."""
    body = struct.pack("=HH", 4 + len(payload), a_type) + payload
    return body + b"\0" * (-len(body) % 4)


def genl(attrs: bytes, *, cmd: int, family: int, seq: int = 0, version: int = 1) -> bytes:
    """A generic-netlink message of ``family``: genlmsghdr (cmd, version) + attributes."""
    return nlmsg(struct.pack("=BBH", cmd, version, 0) + attrs, family, seq)
