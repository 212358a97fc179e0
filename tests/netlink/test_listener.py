"""Tests for procstream.netlink.listener: the listener base on a real netlink socket, and helpers.

The base is exercised through a minimal subclass on NETLINK_USERSOCK, the netlink
protocol meant for user programs: its multicast groups let this test be the "kernel"
(send a burst at a listener that does not read, and the kernel overflows its buffer and
reports ENOBUFS exactly as for the proc connector and TASKSTATS; send an NLMSG_ERROR and
it is the answer to a request). ProcConnector and TaskstatsListener themselves are tested
live in test_connector and test_taskstats.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procstream.netlink.listener import (
    NetlinkError,
    NetlinkListener,
    Probe,
    errno_text,
    error_text,
    opening_problem,
    outside_initial_netns,
    platform_problem,
    socket_drops,
)
from procstream.netlink.messages import NLMSG_HDRLEN, Buffer, DecodeStats, EventsLost, MessageDecoder
from tests.support.children import CLONE_NEWNET, in_child, unshare
from tests.support.kernel_events import assert_closed, collect
from tests.support.netlink_datagrams import NLMSG_OVERRUN, nlerr, nlmsg

NETLINK_USERSOCK = 2
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
PAYLOAD = 0x10  # the message type the test's "kernel" sends records in

#: a datagram the receiver fails on, as a broken socket would
EIO_DATAGRAM = nlmsg(b"EIO", PAYLOAD)
#: what the walk turns into a loss marker
OVERRUN = nlmsg(b"", NLMSG_OVERRUN)


class Payloads(MessageDecoder[bytes]):
    """Each message's payload is a record."""

    def _message(self, data: Buffer, off: int, end: int, nl_type: int, nl_seq: int, out: list[bytes | EventsLost]) -> None:
        out.append(bytes(data[off + NLMSG_HDRLEN : end]))


class UsersockError(NetlinkError):
    pass


class Usersock(NetlinkListener[bytes]):
    """Members of one NETLINK_USERSOCK multicast group; each message's payload is a record.
    ``subscribe``: whether joining counts as a subscription (then close() says goodbye)."""

    Error = UsersockError
    DEFAULT_RCVBUF = 1 << 20

    def __init__(
        self, group: int, *, rcvbuf: int | None = None, force_rcvbuf: bool = True, subscribe: bool = True
    ) -> None:
        super().__init__(Payloads(DecodeStats()), rcvbuf=rcvbuf, force_rcvbuf=force_rcvbuf)
        self.group = group
        self.subscribe = subscribe
        self.goodbyes = 0
        self.goodbye_error: BaseException | None = None

    def open(self) -> Usersock:
        return self._open(socket.SOCK_RAW, NETLINK_USERSOCK, "cannot create a USERSOCK socket ({})", self._join)

    def _join(self, sock: socket.socket) -> None:
        self._bind(sock, 0)
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, self.group)
        self._subscribed = self.subscribe

    def catch_up(self) -> None:
        """What a subscription step does with what arrives before its answer: keep it for
        the first read_events()."""
        self._read(256, self._pending)

    def _receiver(
        self, sock: socket.socket
    ) -> tuple[Callable[[int], bytes], int, Callable[[bytes, list[bytes | EventsLost]], object]]:
        recv, size, decode = super()._receiver(sock)

        def receive(size: int) -> bytes:
            data = recv(size)
            if data == EIO_DATAGRAM:
                raise OSError(errno.EIO, "broken")
            return data

        return receive, size, decode

    def _unsubscribe(self, sock: socket.socket) -> None:
        self.goodbyes += 1
        if self.goodbye_error is not None:
            raise self.goodbye_error


class CountingUsersock(Usersock):
    """A subclass that knows how many messages were dropped (as TaskstatsListener does)."""

    def __init__(self, group: int, **kw: object) -> None:
        super().__init__(group, **kw)  # type: ignore[arg-type]
        self._seen = 0

    def open(self) -> CountingUsersock:
        super().open()
        assert self._sock is not None
        self._seen = socket_drops(self._sock) or 0
        return self

    def _drop_count(self, sock: socket.socket) -> int | None:
        drops = socket_drops(sock)
        if drops is None:
            return None
        new, self._seen = drops - self._seen, drops
        return new


@pytest.fixture
def group() -> int:
    # a random group: another test run on this host must not cross our traffic
    return random.randint(1, 32)


@pytest.fixture
def send_datagram(group: int) -> Iterator[Callable[[bytes], None]]:
    """Send a datagram to the group, as it is."""
    sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_USERSOCK)
    sender.bind((0, 0))

    def send_(datagram: bytes) -> None:
        try:
            sender.sendto(datagram, (0, 1 << (group - 1)))
        except ConnectionRefusedError:
            # The group got it; only the copy for port 0 is refused (USERSOCK has no
            # kernel socket there).
            pass

    try:
        yield send_
    finally:
        sender.close()


@pytest.fixture
def send(send_datagram: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """Send ``payload`` to the group as one record, in a message of its own."""
    return lambda payload: send_datagram(nlmsg(payload, PAYLOAD))


@pytest.fixture
def listener(group: int) -> Iterator[Usersock]:
    ls = Usersock(group).open()
    try:
        yield ls
    finally:
        ls.close()


def tagged(n: int, tag: bytes) -> list[bytes]:
    return [tag + b"-%d" % i + b"\0" * 200 for i in range(n)]


TAG = b"listener-%d" % os.getpid()


# --- reading -----------------------------------------------------------------------------------


def test_read_events_returns_what_is_queued_in_order(listener: Usersock, send: Callable[[bytes], None]) -> None:
    assert listener.read_events() == []
    sent = tagged(5, TAG)
    for p in sent:
        send(p)
    got = collect(listener, lambda evs: len(evs) >= 5)
    assert got == sent
    assert listener.stats.datagrams == 5 and listener.lost == 0 and listener.enobufs == 0
    assert listener.read_events() == []


def test_read_events_is_bounded_per_call(listener: Usersock, send: Callable[[bytes], None]) -> None:
    sent = tagged(5, TAG)
    for p in sent:
        send(p)
    assert listener.wait_readable(5.0) is True
    assert listener.read_events(max_datagrams=2) == sent[:2]
    assert listener.read_events(max_datagrams=2) == sent[2:4]
    assert listener.read_events() == sent[4:]


def test_what_the_subscription_read_comes_first(listener: Usersock, send: Callable[[bytes], None]) -> None:
    early, late = tagged(3, TAG + b"-early"), tagged(2, TAG + b"-late")
    for p in early:
        send(p)
    assert listener.wait_readable(5.0) is True
    listener.catch_up()
    # nothing on the socket now, but something to hand out
    assert listener.wait_readable(0) is True
    for p in late:
        send(p)
    got = collect(listener, lambda evs: len(evs) >= 5)
    assert got == early + late
    assert listener.wait_readable(0) is False


def test_wait_readable_waits_for_data(listener: Usersock, send: Callable[[bytes], None]) -> None:
    assert listener.wait_readable(0.05) is False
    timer = threading.Timer(0.05, send, [TAG])
    timer.start()
    try:
        assert listener.wait_readable(5.0) is True
    finally:
        timer.join()
    assert listener.read_events() == [TAG]


def test_decoder_loss_markers_are_counted_in_lost(
    listener: Usersock, send: Callable[[bytes], None], send_datagram: Callable[[bytes], None]
) -> None:
    send(b"a")
    send_datagram(OVERRUN)
    send(b"b")
    send_datagram(OVERRUN)
    got = collect(listener, lambda evs: len(evs) >= 4)
    assert got[0] == b"a" and got[2] == b"b" and len(got) == 4
    for lost in (got[1], got[3]):
        assert isinstance(lost, EventsLost) and (lost.reason, lost.count) == ("overrun", None)
    assert listener.lost == 2 and listener.enobufs == 0


def test_other_receive_errors_propagate(listener: Usersock, send_datagram: Callable[[bytes], None]) -> None:
    send_datagram(EIO_DATAGRAM)
    assert listener.wait_readable(5.0) is True
    with pytest.raises(OSError) as info:
        listener.read_events()
    assert info.value.errno == errno.EIO


# --- overflow ----------------------------------------------------------------------------------


def overflow(
    ls: Usersock, send: Callable[[bytes], None], n: int = 200
) -> tuple[list[bytes], list[bytes | EventsLost], list[bytes | EventsLost]]:
    """Send ``n`` datagrams at a listener that does not read, then drain it: what was
    sent, what the first read_events() returned, and all that was read."""
    sent = tagged(n, TAG)
    for p in sent:
        send(p)
    first = ls.read_events()
    got = list(first)
    while batch := ls.read_events():
        got.extend(batch)
    return sent, first, got


def test_an_overflow_becomes_one_marker_first_and_reading_goes_on(
    group: int, send: Callable[[bytes], None]
) -> None:
    with Usersock(group, rcvbuf=4096, force_rcvbuf=False) as small:
        assert small.rcvbuf < 16 * 1024
        sent, first, got = overflow(small, send)
        [lost] = [e for e in got if isinstance(e, EventsLost)]
        assert got[0] is lost and lost.reason == "enobufs"
        assert len(first) > 1  # the same call went on reading after the marker
        assert lost.count is None  # this subclass does not count drops
        assert lost.ts_ns > 0 and small.enobufs == 1 and small.lost == 1
        delivered = got[1:]
        # what fitted is what was sent first, in order; the rest was dropped
        assert 0 < len(delivered) < len(sent) and delivered == sent[: len(delivered)]
        # still working afterwards
        send(TAG + b"-after")
        assert collect(small, lambda evs: bool(evs)) == [TAG + b"-after"]
        assert small.enobufs == 1


def test_a_subclass_that_counts_drops_puts_the_count_in_the_marker(
    group: int, send: Callable[[bytes], None]
) -> None:
    with CountingUsersock(group, rcvbuf=4096, force_rcvbuf=False) as small:
        sock = socket.socket(fileno=os.dup(small.fileno()))
        try:
            assert socket_drops(sock) == 0
            sent, _, got = overflow(small, send)
            [lost] = [e for e in got if isinstance(e, EventsLost)]
            # The kernel counts each datagram it could not queue: the count is exact (and
            # proves SO_MEMINFO's number, which Python 3.11 does not name).
            assert lost.count == len(sent) - (len(got) - 1) > 0
            assert socket_drops(sock) == lost.count
        finally:
            sock.close()


# --- buffer size -------------------------------------------------------------------------------


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


def test_the_receive_buffer_is_forced_past_rmem_max_when_we_may(group: int) -> None:
    want = 4 * rmem_max()
    with Usersock(group, rcvbuf=want) as forced, Usersock(group, rcvbuf=want, force_rcvbuf=False) as capped:
        # The kernel doubles what it grants; without SO_RCVBUFFORCE it caps at rmem_max.
        # (Forced, it also proves SO_RCVBUFFORCE's number, which Python 3.11 does not name.)
        assert capped.rcvbuf == 2 * rmem_max()
        if os.geteuid() == 0:  # CAP_NET_ADMIN: forced (SO_RCVBUFFORCE, named or not)
            assert forced.rcvbuf == 2 * want
        else:  # refused: the plain option, capped
            assert forced.rcvbuf == 2 * rmem_max()


# --- lifecycle ---------------------------------------------------------------------------------


def test_close_says_goodbye_once_and_is_final(group: int, send: Callable[[bytes], None]) -> None:
    ls = Usersock(group).open()
    assert not ls.closed and ls.open() is ls
    send(TAG)
    assert ls.wait_readable(5.0) is True
    ls.catch_up()
    ls.close()
    ls.close()
    assert ls.goodbyes == 1
    assert_closed(ls)
    with pytest.raises(ValueError, match="Usersock is not open"):
        _ = ls.rcvbuf
    # it opens again, with nothing left over from before
    with ls:
        assert ls.read_events() == []
        send(TAG + b"-again")
        assert collect(ls, lambda evs: bool(evs)) == [TAG + b"-again"]
    assert ls.goodbyes == 2 and ls.closed


def test_a_failed_goodbye_still_closes(group: int) -> None:
    ls = Usersock(group).open()
    fd = ls.fileno()
    ls.goodbye_error = BrokenPipeError(errno.EPIPE, "gone")
    ls.close()  # an OSError is the kernel's business: swallowed
    assert ls.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    ls.open()
    ls.goodbye_error = RuntimeError("a bug")
    fd = ls.fileno()
    with pytest.raises(RuntimeError):
        ls.close()  # anything else is a bug: raised, but the socket is closed all the same
    assert ls.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_without_a_subscription_close_says_no_goodbye(group: int) -> None:
    ls = Usersock(group, subscribe=False).open()
    ls.close()
    assert ls.closed and ls.goodbyes == 0


def test_a_failed_subscription_closes_the_socket_and_leaves_the_listener_closed(
    group: int, send: Callable[[bytes], None]
) -> None:
    class Refused(Usersock):
        refuse = True

        def _join(self, sock: socket.socket) -> None:
            super()._join(sock)
            if self.refuse:
                self.fd = sock.fileno()
                send(TAG)  # read while subscribing: it must not survive the failure
                assert self.wait_readable(5.0) is True
                self.catch_up()
                raise UsersockError(errno.EPERM, "refused")

    ls = Refused(group)
    # the traceback kept in ``info`` keeps the socket object alive: only close() frees its fd
    with pytest.raises(UsersockError, match="refused") as info:
        ls.open()
    assert info.value.errno == errno.EPERM
    assert ls.closed and ls.goodbyes == 0 and ls.wait_readable(0) is None
    with pytest.raises(OSError):
        os.fstat(ls.fd)
    ls.refuse = False
    with ls:
        assert ls.read_events() == []


def test_the_default_receive_buffer_is_the_subclass_s(group: int) -> None:
    with Usersock(group) as ls:
        if os.geteuid() == 0:  # forced, whatever rmem_max says
            assert ls.rcvbuf == 2 * Usersock.DEFAULT_RCVBUF
        else:
            assert ls.rcvbuf == 2 * min(Usersock.DEFAULT_RCVBUF, rmem_max())


def test_a_missing_protocol_raises_the_subclass_error() -> None:
    with pytest.raises(UsersockError) as info:
        Usersock._create_socket(socket.SOCK_RAW, 32, "no socket ({}), sorry")
    assert info.value.errno == errno.EPROTONOSUPPORT
    assert info.value.strerror == "no socket (EPROTONOSUPPORT: Protocol not supported), sorry"


def test_a_platform_without_netlink_raises_the_subclass_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "AF_NETLINK")
    with pytest.raises(UsersockError) as info:
        Usersock._create_socket(socket.SOCK_RAW, NETLINK_USERSOCK, "({})")
    assert info.value.errno == errno.EPROTONOSUPPORT and "AF_NETLINK" in str(info.value.strerror)


def test_the_base_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        NetlinkListener(Payloads(DecodeStats()), rcvbuf=1, force_rcvbuf=False)  # type: ignore[abstract]


async def test_usable_from_asyncio_with_add_reader(listener: Usersock, send: Callable[[bytes], None]) -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes | EventsLost] = asyncio.Queue()
    loop.add_reader(listener.fileno(), lambda: [got.put_nowait(e) for e in listener.read_events()])
    try:
        send(TAG)
        assert await asyncio.wait_for(got.get(), 5) == TAG
    finally:
        loop.remove_reader(listener.fileno())


# --- waiting for an answer ---------------------------------------------------------------------


def test_the_answer_is_found_among_others_and_what_came_first_is_kept(
    listener: Usersock, send: Callable[[bytes], None], send_datagram: Callable[[bytes], None]
) -> None:
    early = tagged(3, TAG + b"-early")
    for p in early[:2]:
        send(p)
    send_datagram(nlerr(0, seq=41))  # someone else's request
    send_datagram(nlmsg(early[2], PAYLOAD) + nlerr(errno.EPERM, seq=42))  # a record, then ours
    assert listener._await_answer(42, time.monotonic() + 5, "the test request") == errno.EPERM
    assert listener._decoder.acks is None  # nobody waits now: nothing is kept
    send(TAG + b"-late")
    assert collect(listener, lambda evs: len(evs) >= 4) == [*early, TAG + b"-late"]
    assert (listener.stats.acks, listener.stats.errors) == (1, 1)


def test_no_answer_by_the_deadline_is_none(listener: Usersock, send_datagram: Callable[[bytes], None]) -> None:
    send_datagram(nlerr(0, seq=41))
    start = time.monotonic()
    assert listener._await_answer(42, start + 0.05, "the test request") is None
    assert time.monotonic() - start >= 0.05 and listener._decoder.acks is None


def test_a_receive_error_while_waiting_raises_the_subclass_error(
    listener: Usersock, send_datagram: Callable[[bytes], None]
) -> None:
    send_datagram(EIO_DATAGRAM)
    with pytest.raises(UsersockError) as info:
        listener._await_answer(42, time.monotonic() + 5, "the test request")
    assert info.value.errno == errno.EIO
    assert info.value.strerror == "the test request failed (EIO: Input/output error)"
    assert listener._decoder.acks is None


# --- probes ------------------------------------------------------------------------------------


def test_a_refusal_names_the_source() -> None:
    refused = Probe.refused("usersock", "no reason")
    assert refused == (False, "usersock unavailable: no reason")
    assert (refused.ok, refused.reason) == (False, "usersock unavailable: no reason")


def test_why_opening_failed_is_said_for_a_probe(group: int) -> None:
    def refuse() -> None:
        raise UsersockError(errno.EPERM, "the kernel said no")

    def break_down() -> None:
        raise OSError(errno.EIO, "broken")

    assert opening_problem(refuse) == "the kernel said no"
    assert opening_problem(break_down) == "unexpected error opening it (EIO: Input/output error)"
    ls = Usersock(group)
    assert opening_problem(ls.open) is None and not ls.closed
    ls.close()


def test_the_platform_is_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    assert platform_problem() is None
    monkeypatch.delattr(socket, "AF_NETLINK")
    assert platform_problem() == "not Linux (no AF_NETLINK)"


# --- helpers -----------------------------------------------------------------------------------


def test_errors_as_a_log_line_says_them() -> None:
    assert errno_text(errno.EPERM) == "EPERM: Operation not permitted"
    assert errno_text(4242) == "4242: Unknown error 4242"
    assert error_text(FileNotFoundError(errno.ENOENT, "x")) == "ENOENT: No such file or directory"
    assert error_text(OSError(4242, "odd")) == "[Errno 4242] odd"
    assert error_text(ValueError("bad value")) == "bad value"
    assert error_text(ValueError()) == "ValueError"


def test_this_process_is_in_the_initial_network_namespace() -> None:
    assert outside_initial_netns() is False


def test_a_child_network_namespace_is_recognised(tmp_path: Path) -> None:
    # pid 1's link is often unreadable, even to root (here too: ptrace rules), so the
    # reference is given through procfs mounts made up for the test: "pid 1" in the
    # initial namespace (ours, the parent's), "pid 1" in the child's own, and none.
    initial, same, none = tmp_path / "initial", tmp_path / "same", tmp_path / "none"
    for mount, target in ((initial, f"/proc/{os.getpid()}/ns/net"), (same, "/proc/self/ns/net")):
        (mount / "1" / "ns").mkdir(parents=True)
        (mount / "1" / "ns" / "net").symlink_to(target)
    none.mkdir()

    def child() -> tuple[bool, bool, bool]:
        unshare(CLONE_NEWNET)
        return tuple(outside_initial_netns(str(m)) for m in (initial, same, none))  # type: ignore[return-value]

    assert in_child(child) == (True, False, False)
