"""Tests for procstream.netlink.messages: the message walk both sockets decode with, on
constructed bytes, and the exit status both report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from procstream.netlink.messages import (
    NLMSG_HDRLEN,
    NLMSGHDR,
    Buffer,
    DecodeStats,
    EventsLost,
    MessageDecoder,
    decode_exit_status,
)
from tests.support.netlink_datagrams import NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, nlerr, nlmsg

Seen = tuple[int, int, bytes]  # a protocol message as the test decoder hands it back


class Recorder(MessageDecoder[Seen]):
    """Hands back every protocol message as (type, seq, payload)."""

    def _message(self, data: Buffer, off: int, end: int, nl_type: int, nl_seq: int, out: list[Seen | EventsLost]) -> None:
        out.append((nl_type, nl_seq, bytes(data[off + NLMSG_HDRLEN : end])))


class Broken(MessageDecoder[Seen]):
    """A protocol decoder with a bug: it raises on every message."""

    def _message(self, data: Buffer, off: int, end: int, nl_type: int, nl_seq: int, out: list[Seen | EventsLost]) -> None:
        raise IndexError("a bug")


def recorder() -> Recorder:
    return Recorder(DecodeStats())


# --- the walk ----------------------------------------------------------------------------------


def test_protocol_messages_are_handed_over_in_order() -> None:
    dec = recorder()
    data = (
        nlmsg(b"first", 0x10, seq=1)
        + nlmsg(b"", NLMSG_NOOP)
        + nlmsg(b"in a DONE", NLMSG_DONE, seq=2)  # the proc connector's way
        + nlmsg(b"", NLMSG_DONE)  # a bare end-of-multipart marker: nothing in it
        + nlmsg(b"x" * 7, 0x1234, seq=3)  # padded to 4 bytes
        + nlmsg(b"last", 0x10, seq=4)
    )
    assert dec.feed(data) == [
        (0x10, 1, b"first"), (NLMSG_DONE, 2, b"in a DONE"), (0x1234, 3, b"x" * 7), (0x10, 4, b"last"),
    ]  # fmt: skip
    assert (dec.stats.datagrams, dec.stats.messages, dec.stats.malformed) == (1, 6, 0)


def test_any_buffer_type_and_an_output_list_to_extend() -> None:
    data = nlmsg(b"a", 0x10) + nlmsg(b"b", 0x10)
    for form in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
        out: list[Seen | EventsLost] = [(0, 0, b"before")]
        assert recorder().feed(form, out) is out
        assert [x[2] for x in out if isinstance(x, tuple)] == [b"before", b"a", b"b"]


def test_error_messages_are_answers_recorded_while_someone_waits() -> None:
    dec = recorder()
    answers = nlerr(0, seq=7) + nlerr(1, seq=8)  # an acknowledgement, then EPERM
    assert dec.feed(answers) == []  # nothing recorded: nobody waits
    assert (dec.stats.acks, dec.stats.errors) == (1, 1)
    dec.acks = []
    dec.feed(answers + nlerr(0, seq=7))
    assert dec.acks == [(7, 0), (8, 1), (7, 0)]
    assert (dec.stats.acks, dec.stats.errors, dec.stats.malformed) == (3, 2, 0)


def test_an_overrun_becomes_a_loss_marker_in_place() -> None:
    dec = recorder()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    out = dec.feed(nlmsg(b"a", 0x10) + nlmsg(b"", NLMSG_OVERRUN) + nlmsg(b"b", 0x10))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    first, lost, last = out
    assert first == (0x10, 0, b"a") and last == (0x10, 0, b"b")
    assert isinstance(lost, EventsLost) and (lost.reason, lost.count) == ("overrun", None)
    assert before <= lost.ts_ns <= after
    assert dec.stats.lost_markers == 1


def test_every_truncation_is_survived_and_counted() -> None:
    messages = [nlmsg(p, 0x10) for p in (b"one", b"two!", b"three")]
    whole = b"".join(messages)
    # where a datagram may end: after a message, with all, some or none of its padding
    boundaries = {0}
    for i, payload in enumerate((b"one", b"two!", b"three")):
        start = len(b"".join(messages[:i]))
        boundaries.update(range(start + NLMSG_HDRLEN + len(payload), start + len(messages[i]) + 1))
    expected = recorder().feed(whole)
    for cut in range(len(whole) + 1):
        dec = recorder()
        got = dec.feed(whole[:cut])
        # what is decoded is always a correct prefix of the whole
        assert got == expected[: len(got)], cut
        assert dec.stats.malformed == (0 if cut in boundaries else 1), cut


@pytest.mark.parametrize(
    "data",
    [
        NLMSGHDR.pack(8, 0x10, 0, 0, 0),  # nlmsg_len below the header
        NLMSGHDR.pack(500, 0x10, 0, 0, 0) + b"\0" * 60,  # beyond the datagram
        nlmsg(b"\0\0", NLMSG_ERROR),  # an error message without its error code
        nlmsg(b"ok", 0x10) + b"\1\2\3\4\5\6\7\x08",  # trailing bytes too short for a header
    ],
)
def test_inconsistent_lengths_are_counted_not_raised(data: bytes) -> None:
    dec = recorder()
    dec.acks = []
    got = dec.feed(data)
    assert dec.stats.malformed == 1
    assert got in ([], [(0x10, 0, b"ok")]) and dec.acks == []


def test_a_protocol_decoder_that_raises_is_counted_not_raised() -> None:
    dec = Broken(DecodeStats())
    assert dec.feed(nlmsg(b"x", 0x10)) == []
    assert (dec.stats.datagrams, dec.stats.messages, dec.stats.malformed) == (1, 1, 1)


# --- exit status -------------------------------------------------------------------------------


def test_decode_exit_status_agrees_with_the_os_macros_on_every_status() -> None:
    for status in range(0x10000):
        if os.WIFEXITED(status):
            expected = (os.WEXITSTATUS(status), None, False)
        elif os.WIFSIGNALED(status):
            expected = (None, os.WTERMSIG(status), os.WCOREDUMP(status))
        else:  # stopped or continued: never an exit
            expected = (None, None, False)
        assert decode_exit_status(status) == expected, hex(status)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, (0, None, False)),
        (7 << 8, (7, None, False)),
        (255 << 8, (255, None, False)),
        (signal.SIGKILL, (None, 9, False)),
        (signal.SIGTERM, (None, 15, False)),
        (signal.SIGSEGV | 0x80, (None, 11, True)),
        (signal.SIGABRT | 0x80, (None, 6, True)),
        (0x137F, (None, None, False)),  # stopped by SIGSTOP: never an exit status
    ],
)
def test_decode_exit_status_table(status: int, expected: tuple[int | None, int | None, bool]) -> None:
    assert decode_exit_status(status) == expected


def _wait_status(args: list[str]) -> int:
    proc = subprocess.Popen(args)
    try:
        return os.waitpid(proc.pid, 0)[1]
    finally:
        proc.returncode = -1  # reaped above; keep Popen from waiting again


@pytest.mark.parametrize("code", ["import sys; sys.exit(7)", "import os; os.kill(os.getpid(), 9)"])
def test_decode_exit_status_agrees_with_waitpid(code: str) -> None:
    status = _wait_status([sys.executable, "-S", "-c", code])
    exit_code, sig, core = decode_exit_status(status)
    assert exit_code == (os.WEXITSTATUS(status) if os.WIFEXITED(status) else None)
    assert sig == (os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
    assert core == (os.WIFSIGNALED(status) and os.WCOREDUMP(status))


# --- framing -----------------------------------------------------------------------------------


def test_netlink_framing_constants() -> None:
    assert NLMSG_HDRLEN == 16
    # host-endian, no padding: len u32, type u16, flags u16, seq u32, pid u32
    fields = [(20, 4), (3, 2), (1, 2), (2, 4), (7, 4)]
    assert NLMSGHDR.pack(20, 3, 1, 2, 7) == b"".join(v.to_bytes(n, sys.byteorder) for v, n in fields)
