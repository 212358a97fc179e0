"""Tests for procstream.netlink.genl: requests and attributes on constructed bytes, then a
family lookup against the live kernel."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

import pytest

from procstream.netlink.genl import GENL_ID_CTRL, NETLINK_GENERIC, FamilyLookup, attribute, attributes, request
from procstream.netlink.messages import DecodeStats
from procstream.netlink.taskstats import TaskstatsListener
from tests.support.netlink_datagrams import NLA_F_NESTED, genl, nla, nlerr
from tests.support.waiting import wait_for

CTRL_CMD_NEWFAMILY, CTRL_CMD_GETFAMILY = 1, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_VERSION = 1, 2, 3
NLM_F_REQUEST, NLM_F_ACK = 1, 4


# --- building ----------------------------------------------------------------------------------


def test_an_attribute_is_padded_to_four_bytes() -> None:
    assert attribute(7, b"abc") == struct.pack("=HH", 7, 7) + b"abc\0"
    assert attribute(7, b"abcd") == struct.pack("=HH", 8, 7) + b"abcd"
    assert attribute(9, b"") == struct.pack("=HH", 4, 9)
    assert attribute(5, b"TASKSTATS\0") == nla(5, b"TASKSTATS\0")


@pytest.mark.parametrize(("ack", "flags"), [(True, NLM_F_REQUEST | NLM_F_ACK), (False, NLM_F_REQUEST)])
def test_a_request_carries_family_command_version_and_flags(ack: bool, flags: int) -> None:
    attrs = attribute(4, b"0-3\0")
    message = request(31, 1, 2, 12345, attrs, ack=ack)
    length, family, got_flags, seq, port = struct.unpack_from("=IHHII", message)
    assert (length, family, got_flags, seq, port) == (len(message), 31, flags, 12345, 0)
    assert struct.unpack_from("=BBH", message, 16) == (1, 2, 0)
    assert message[20:] == attrs


# --- reading attributes ------------------------------------------------------------------------


def test_attributes_are_read_with_their_flags_cleared() -> None:
    data = b"head" + nla(1, b"ab") + nla(2 | NLA_F_NESTED, nla(3, b"wxyz")) + nla(0x4000 | 5, b"")
    found, whole = attributes(data, 4, len(data))
    assert whole
    assert [(t, data[s:e]) for t, s, e in found] == [(1, b"ab"), (2, nla(3, b"wxyz")), (5, b"")]


@pytest.mark.parametrize(
    "bad",
    [
        struct.pack("=HH", 2, 9) + b"\0\0",  # length below its own header
        struct.pack("=HH", 40, 9) + b"\0" * 8,  # beyond the end
    ],
)
def test_an_attribute_whose_length_does_not_fit_ends_the_list(bad: bytes) -> None:
    data = nla(1, b"kept") + bad + nla(2, b"lost")
    found, whole = attributes(data, 0, len(data))
    assert not whole and [t for t, _, _ in found] == [1]


def test_attributes_stop_at_the_end_given() -> None:
    data = nla(1, b"a") + nla(2, b"b")
    found, whole = attributes(data, 0, len(nla(1, b"a")) + 3)  # 3 bytes can't hold a header
    assert whole and [t for t, _, _ in found] == [1]


# --- the family lookup -------------------------------------------------------------------------


def reply(seq: int, *attrs: bytes, cmd: int = CTRL_CMD_NEWFAMILY) -> bytes:
    return genl(b"".join(attrs), cmd=cmd, family=GENL_ID_CTRL, seq=seq)


def test_the_lookup_asks_the_controller_by_name() -> None:
    lookup = FamilyLookup("TASKSTATS", 77, DecodeStats())
    assert lookup.request == (
        struct.pack("=IHHII", 36, GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, 77, 0)
        + struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0)
        + nla(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0")
    )
    assert lookup.family is None


def test_the_lookup_reads_the_id_from_the_controllers_reply() -> None:
    lookup = FamilyLookup("TASKSTATS", 77, DecodeStats())
    lookup.acks = []
    lookup.feed(
        reply(77, nla(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0"), nla(CTRL_ATTR_FAMILY_ID, struct.pack("=H", 31)),
              nla(CTRL_ATTR_VERSION, struct.pack("=I", 1)))
        + nlerr(0, seq=77)
    )  # fmt: skip
    assert lookup.family == 31 and lookup.acks == [(77, 0)]
    assert (lookup.stats.messages, lookup.stats.foreign, lookup.stats.malformed) == (2, 0, 0)


def test_the_lookup_takes_only_its_own_answer() -> None:
    lookup = FamilyLookup("TASKSTATS", 77, DecodeStats())
    family_id = nla(CTRL_ATTR_FAMILY_ID, struct.pack("=H", 31))
    lookup.feed(reply(78, family_id))  # someone else's
    lookup.feed(genl(family_id, cmd=CTRL_CMD_NEWFAMILY, family=0x20, seq=77))  # not the controller
    assert lookup.stats.foreign == 2
    lookup.feed(reply(77, family_id, cmd=CTRL_CMD_GETFAMILY))  # not a reply
    assert lookup.stats.ignored == 1
    lookup.feed(reply(77, nla(CTRL_ATTR_FAMILY_ID, b"\1")))  # an id too short to hold one
    assert lookup.family is None and lookup.stats.malformed == 0


@pytest.fixture
def generic() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    try:
        sock.bind((0, 0))
        yield sock
    finally:
        sock.close()


def look_up(sock: socket.socket, name: str, seq: int) -> tuple[int, int | None]:
    """Ask the live kernel: (the answer's errno, the family id)."""
    lookup = FamilyLookup(name, seq, DecodeStats())
    lookup.acks = []
    sock.send(lookup.request)

    def answered() -> tuple[int, int | None] | None:
        lookup.feed(sock.recv(65536))
        return next(((err, lookup.family) for s, err in lookup.acks if s == seq), None)

    sock.settimeout(5)
    return wait_for(f"the kernel's answer to the lookup of {name}", answered, 5, step=0)


def test_the_live_controller_finds_itself_and_taskstats(generic: socket.socket) -> None:
    assert look_up(generic, "nlctrl", 1) == (0, GENL_ID_CTRL)  # the one fixed id
    err, family = look_up(generic, "TASKSTATS", 2)
    if err == errno.ENOENT:
        pytest.skip("this kernel has no TASKSTATS family (CONFIG_TASKSTATS)")
    assert err == 0 and family is not None and family > GENL_ID_CTRL
    with TaskstatsListener() as listener:
        assert listener.family_id == family


def test_the_live_controller_answers_an_unknown_name_with_enoent(generic: socket.socket) -> None:
    assert look_up(generic, "NO-SUCH-FAMILY", 3) == (errno.ENOENT, None)
