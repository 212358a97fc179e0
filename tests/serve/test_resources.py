"""procstream.serve.resources: --max-memory and its parts, the descriptor limit, the
resident-size guard."""

from __future__ import annotations

import resource

import pytest

from procstream.serve.resources import (
    FD_RESERVE,
    MIN_MAX_MEMORY,
    MemoryBudget,
    MemoryGuard,
    fit_descriptors,
    parse_size,
)
from procstream.serve.service import memory_budget
from procstream.wiring import UsageError
from tests.support.children import in_child

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("text", "size"),
    [("256M", 256 * MIB), ("1G", 1024 * MIB), ("512MiB", 512 * MIB), ("64mb", 64 * MIB),
     ("268435456", 268435456), (" 2g ", 2048 * MIB), ("100k", 102400)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1M", "1.5G", "12X", "\u00b2M", "1 G B"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_max_memory_is_checked_and_split() -> None:
    with pytest.raises(UsageError, match="at least 64M"):
        memory_budget("32M")
    with pytest.raises(UsageError, match="--max-memory"):
        memory_budget("lots")
    budget = memory_budget("256M")
    parts = budget.parts()
    assert sum(parts.values()) == budget.total == 256 * MIB
    assert parts == {"buffer": 64 * MIB, "clients": 64 * MIB, "caches": 32 * MIB,
                     "event_log": 16 * MIB, "other": 80 * MIB}
    assert MemoryBudget(MIN_MAX_MEMORY).parts()["other"] >= MIN_MAX_MEMORY // 4


def _fit_under(soft: int, hard: int, clients: int, extra: int) -> tuple[int, int, bool, bool]:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    got = fit_descriptors(clients, extra)
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return got.max_clients, now, got.lowered, got.message is not None


def test_the_soft_limit_is_raised_to_what_the_clients_need() -> None:
    # in a child: limits are the process's, and lowering the hard one is for good
    clients, soft, lowered, said = in_child(_fit_under, 1024, 4096, 1024, 256)
    assert (clients, soft, lowered, said) == (1024, 1024 + 256 + FD_RESERVE, False, True)


def test_the_clients_are_lowered_when_the_hard_limit_is_too_low() -> None:
    clients, soft, lowered, said = in_child(_fit_under, 1024, 1024, 1024, 256)
    assert (clients, soft, lowered, said) == (1024 - 256 - FD_RESERVE, 1024, True, True)


def test_nothing_changes_when_the_limit_is_enough() -> None:
    assert in_child(_fit_under, 8192, 8192, 1024, 256) == (1024, 8192, False, False)


def test_the_guard_sheds_near_the_budget_and_gives_pages_back() -> None:
    rss = [100 * MIB]
    shed: list[int] = []

    def do_shed() -> None:
        shed.append(rss[0])
        rss[0] = 120 * MIB

    guard = MemoryGuard(256 * MIB, do_shed, rss=lambda: rss[0])
    guard.check()
    assert shed == [] and guard.last_rss == 100 * MIB
    rss[0] = 240 * MIB  # past 90 %
    guard.check()
    assert shed == [240 * MIB] and guard.sheds == 1 and guard.last_rss == 120 * MIB
    for _ in range(20):
        guard.check()  # back below: nothing more to shed
    assert guard.sheds == 1


def test_the_guard_gives_back_what_a_wave_of_connections_held_once_it_is_over() -> None:
    ended = [0]
    collected: list[int] = []
    trimmed: list[int] = []
    guard = MemoryGuard(256 * MIB, lambda: None, rss=lambda: 100 * MIB, ended=lambda: ended[0],
                        collect=lambda: collected.append(ended[0]), trim=lambda: trimmed.append(ended[0]))
    wave = MemoryGuard.COLLECT_AFTER
    for n in (wave // 2, wave + 5, wave + 20):  # still ending at every check
        ended[0] = n
        guard.check()
    assert collected == [] and trimmed == []
    guard.check()  # none ended since the last check: the wave is over
    assert collected == [wave + 20] and trimmed == [wave + 20] and guard.collections == 1
    guard.check()
    assert trimmed == [wave + 20]  # once per wave
    ended[0] += 3  # a small wave: its pages, not worth a collection
    guard.check()
    guard.check()
    assert collected == [wave + 20] and trimmed == [wave + 20, wave + 23]
    ended[0] += wave - 3  # with the small one, enough for a collection
    guard.check()
    guard.check()
    assert collected == [wave + 20, 2 * wave + 20]
