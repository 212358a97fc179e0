"""uid -> user name, cached, with Go process-exporter's fallbacks."""

from __future__ import annotations

import os
import pwd
import threading

from procstream.users import UserNames


def test_real_lookup_of_known_uids() -> None:
    names = UserNames()
    assert names.name(0) == pwd.getpwuid(0).pw_name == "root"
    me = os.geteuid()
    assert names(me) == pwd.getpwuid(me).pw_name


def test_unknown_uid_falls_back_to_its_number() -> None:
    taken = {p.pw_uid for p in pwd.getpwall()}
    unknown = next(u for u in range(4_000_000_000, 4_000_001_000) if u not in taken)
    assert UserNames().name(unknown) == str(unknown)


def test_unknown_and_out_of_range() -> None:
    names = UserNames()
    assert names.name(-1) == ""  # the reader couldn't tell
    assert names.name(-7) == "-7"  # pwd raises, we fall back
    assert names.name(2**40) == str(2**40)  # OverflowError inside pwd


def test_cached_once_per_uid() -> None:
    calls: list[int] = []

    def lookup(uid: int) -> str:
        calls.append(uid)
        if uid == 5:
            raise KeyError(uid)
        return f"user{uid}"

    names = UserNames(lookup)
    assert [names(1), names(1), names(5), names(5), names(2)] == ["user1", "user1", "5", "5", "user2"]
    assert calls == [1, 5, 2]  # misses are cached too
    assert len(names) == 3
    names.clear()
    assert names(1) == "user1" and calls == [1, 5, 2, 1]


def test_cache_is_bounded() -> None:
    names = UserNames(lambda uid: f"u{uid}", max_entries=10)
    for uid in range(1000):
        assert names(uid) == f"u{uid}"
        assert len(names) <= 10


def test_concurrent_use_gives_consistent_answers() -> None:
    names = UserNames(lambda uid: f"u{uid}")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(2000):
                assert names(i % 50) == f"u{i % 50}"
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
