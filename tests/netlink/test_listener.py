"""Tests for procstream.netlink.listener: the listener base on a real netlink socket, and helpers.

The base is exercised through a minimal subclass on NETLINK_USERSOCK, the netlink
protocol meant for user programs: its multicast groups let this test be the "kernel"
(send a burst at a listener that does not read, and the kernel overflows its buffer and
reports ENOBUFS exactly as for the proc connector and TASKSTATS). ProcConnector and
TaskstatsListener themselves are tested live in test_netlink and test_taskstats.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from procstream.netlink.listener import (
    NLMSG_HDRLEN,
    NLMSGHDR,
    NetlinkListener,
    decode_exit_status,
    errno_text,
    error_text,
    outside_initial_netns,
    socket_drops,
)
from tests.support.children import CLONE_NEWNET, in_child, unshare
from tests.support.kernel_events import collect

NETLINK_USERSOCK = 2
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1


@dataclass(frozen=True)
class Lost:
    ts_ns: int
    reason: str
    count: int | None


@dataclass
class Stats:
    datagrams: int = 0
    lost_markers: int = 0


class UsersockError(OSError):
    pass


class Usersock(NetlinkListener[bytes | Lost]):
    """Members of one NETLINK_USERSOCK multicast group. Each datagram is one item (its
    bytes); a datagram ``b"LOST"`` is what a decoder turns into a loss marker, and one
    ``b"EIO"`` makes the receiver fail as a broken socket would."""

    def __init__(self, group: int, *, rcvbuf: int = 1 << 20, force_rcvbuf: bool = True) -> None:
        super().__init__(rcvbuf=rcvbuf, force_rcvbuf=force_rcvbuf)
        self.group = group
        self.stats = Stats()
        self.goodbyes = 0
        self.goodbye_error: BaseException | None = None

    def open(self) -> Usersock:
        if self._sock is not None:
            return self
        sock = self._create_socket(
            socket.SOCK_RAW, NETLINK_USERSOCK, UsersockError, "cannot create a USERSOCK socket ({})"
        )
        try:
            self._set_rcvbuf(sock)
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, self.group)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        return self

    def catch_up(self) -> None:
        """What a subscription step does with what arrives before its answer: keep it for
        the first read_events() (as ProcConnector does while it waits for its ack)."""
        self._read(256, self._pending)

    def _receiver(
        self, sock: socket.socket
    ) -> tuple[Callable[[int], bytes], int, Callable[[bytes, list[bytes | Lost]], None]]:
        recv = sock.recv
        stats = self.stats

        def receive(size: int) -> bytes:
            data = recv(size)
            if data == b"EIO":
                raise OSError(errno.EIO, "broken")
            return data

        def decode(data: bytes, out: list[bytes | Lost]) -> None:
            stats.datagrams += 1
            if data == b"LOST":
                stats.lost_markers += 1
                out.append(Lost(0, "decoded", None))
            else:
                out.append(data)

        return receive, 65536, decode

    def _lost(self, ts_ns: int, reason: str, count: int | None) -> Lost:
        return Lost(ts_ns, reason, count)

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
def send(group: int) -> Iterator[Callable[[bytes], None]]:
    sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_USERSOCK)
    sender.bind((0, 0))

    def send_(payload: bytes) -> None:
        try:
            sender.sendto(payload, (0, 1 << (group - 1)))
        except ConnectionRefusedError:
            # The group got it; only the copy for port 0 is refused (USERSOCK has no
            # kernel socket there).
            pass

    try:
        yield send_
    finally:
        sender.close()


@pytest.fixture
def listener(group: int) -> Iterator[Usersock]:
    ls = Usersock(group).open()
    try:
        yield ls
    finally:
        ls.close()


def tagged(n: int, tag: bytes) -> list[bytes]:
    return [tag + b"-%d" % i + b"\0" * 200 for i in range(n)]


TAG = b"nlsocket-%d" % os.getpid()


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


def test_decoder_loss_markers_are_counted_in_lost(listener: Usersock, send: Callable[[bytes], None]) -> None:
    for p in (b"a", b"LOST", b"b", b"LOST"):
        send(p)
    got = collect(listener, lambda evs: len(evs) >= 4)
    assert got == [b"a", Lost(0, "decoded", None), b"b", Lost(0, "decoded", None)]
    assert listener.lost == 2 and listener.enobufs == 0


def test_other_receive_errors_propagate(listener: Usersock, send: Callable[[bytes], None]) -> None:
    send(b"EIO")
    assert listener.wait_readable(5.0) is True
    with pytest.raises(OSError) as info:
        listener.read_events()
    assert info.value.errno == errno.EIO


# --- overflow ----------------------------------------------------------------------------------


def overflow(
    ls: Usersock, send: Callable[[bytes], None], n: int = 200
) -> tuple[list[bytes], list[bytes | Lost], list[bytes | Lost]]:
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
        [lost] = [e for e in got if isinstance(e, Lost)]
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
            [lost] = [e for e in got if isinstance(e, Lost)]
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
    assert ls.goodbyes == 1 and ls.closed
    assert ls.wait_readable(0) is None
    for use in (ls.fileno, ls.read_events, lambda: ls.rcvbuf):
        with pytest.raises(ValueError, match="Usersock is not open"):
            use()
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


def test_a_missing_protocol_raises_the_subclass_error() -> None:
    with pytest.raises(UsersockError) as info:
        NetlinkListener._create_socket(socket.SOCK_RAW, 32, UsersockError, "no socket ({}), sorry")
    assert info.value.errno == errno.EPROTONOSUPPORT
    assert info.value.strerror == "no socket (EPROTONOSUPPORT: Protocol not supported), sorry"


def test_a_platform_without_netlink_raises_the_subclass_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "AF_NETLINK")
    with pytest.raises(UsersockError) as info:
        NetlinkListener._create_socket(socket.SOCK_RAW, NETLINK_USERSOCK, UsersockError, "({})")
    assert info.value.errno == errno.EPROTONOSUPPORT and "AF_NETLINK" in str(info.value.strerror)


def test_the_base_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        NetlinkListener(rcvbuf=1, force_rcvbuf=False)  # type: ignore[abstract]


async def test_usable_from_asyncio_with_add_reader(listener: Usersock, send: Callable[[bytes], None]) -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes | Lost] = asyncio.Queue()
    loop.add_reader(listener.fileno(), lambda: [got.put_nowait(e) for e in listener.read_events()])
    try:
        send(TAG)
        assert await asyncio.wait_for(got.get(), 5) == TAG
    finally:
        loop.remove_reader(listener.fileno())


# --- helpers -----------------------------------------------------------------------------------


def test_decode_exit_status_agrees_with_the_os_macros_on_every_status() -> None:
    for status in range(0x10000):
        if os.WIFEXITED(status):
            expected = (os.WEXITSTATUS(status), None, False)
        elif os.WIFSIGNALED(status):
            expected = (None, os.WTERMSIG(status), os.WCOREDUMP(status))
        else:  # stopped or continued: never an exit
            expected = (None, None, False)
        assert decode_exit_status(status) == expected, hex(status)


def test_errors_as_a_log_line_says_them() -> None:
    assert errno_text(errno.EPERM) == "EPERM: Operation not permitted"
    assert errno_text(4242) == "4242: Unknown error 4242"
    assert error_text(FileNotFoundError(errno.ENOENT, "x")) == "ENOENT: No such file or directory"
    assert error_text(OSError(4242, "odd")) == "[Errno 4242] odd"
    assert error_text(ValueError("bad value")) == "bad value"
    assert error_text(ValueError()) == "ValueError"


def test_netlink_framing_constants() -> None:
    assert NLMSG_HDRLEN == 16
    # host-endian, no padding: len u32, type u16, flags u16, seq u32, pid u32
    fields = [(20, 4), (3, 2), (1, 2), (2, 4), (7, 4)]
    assert NLMSGHDR.pack(20, 3, 1, 2, 7) == b"".join(v.to_bytes(n, sys.byteorder) for v, n in fields)


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
