"""The core and per-process numbers: each poll's live table to whoever listens, before
that poll's events; ``proc.update`` built only while someone wants it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from procstream.live import LiveTable, UpdateInterest
from tests.collect.test_core import Env
from tests.support.fake_procs import fake


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.core.close()


async def test_no_table_and_no_updates_without_listeners_or_interest(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    original = LiveTable.of.__func__  # type: ignore[attr-defined]
    then = LiveTable.then

    def counting(cls, *a, **kw):  # noqa: ANN001
        built.append(1)
        return original(cls, *a, **kw)

    def counting_then(self, *a, **kw):  # noqa: ANN001
        built.append(1)
        return then(self, *a, **kw)

    monkeypatch.setattr(LiveTable, "of", classmethod(counting))
    monkeypatch.setattr(LiveTable, "then", counting_then)
    await env.poll()
    env.scan.procs = [fake(10, "a", start=100, cpu=(1.0, 0.0))]
    await env.poll()
    assert built == []  # nobody asked: nothing built
    assert "proc.update" not in [e["type"] for e in env.sink.events()]
    assert env.core._grouper.tracker.take_changes() is None  # nor changes recorded for one


async def test_listeners_get_each_table_before_the_polls_output(env: Env) -> None:
    tables: list[tuple[LiveTable, int]] = []
    env.core.on_live(lambda t: tables.append((t, len(env.sink.calls))))
    await env.poll()
    env.scan.procs = [fake(10, "a", start=100, cpu=(1.0, 0.0))]
    await env.poll()
    assert [n for _, n in tables] == [0, 1]  # before the baseline, before the events
    (first, _), (second, _) = tables
    assert second.fields(10)["cpu_pct"] == 100.0  # type: ignore[index]
    assert first.fields(10)["cpu_pct"] == 0.0  # type: ignore[index]
    assert "proc.update" not in [e["type"] for e in env.sink.events()]  # a table is not interest


async def test_updates_for_the_processes_wanted_from_the_next_poll(env: Env) -> None:
    env.scan.procs = [fake(10, "a", start=100), fake(11, "b", start=100)]
    await env.poll()
    env.core.want_updates(UpdateInterest(groups=frozenset({"b"})))
    await env.poll()
    assert [(e["type"], e["pid"]) for e in env.sink.events() if e["type"] == "proc.update"] == [("proc.update", 11)]
    env.core.want_updates(None)
    env.sink.calls.clear()
    env.scan.procs = [fake(10, "a", start=100, cpu=(3.0, 0.0)), fake(11, "b", start=100, cpu=(3.0, 0.0))]
    await env.poll()
    assert [e["type"] for e in env.sink.events()] == ["group.update", "group.update", "cycle"]


async def test_each_table_after_the_first_is_made_from_the_last_one(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    original, then = LiveTable.of.__func__, LiveTable.then  # type: ignore[attr-defined]
    monkeypatch.setattr(LiveTable, "of", classmethod(lambda cls, *a: made.append("whole") or original(cls, *a)))
    monkeypatch.setattr(LiveTable, "then", lambda self, *a: made.append("then") or then(self, *a))
    tables: list[LiveTable] = []
    env.core.on_live(tables.append)
    env.scan.procs = [fake(10, "a", start=100), fake(11, "b", start=100)]
    await env.poll()
    env.scan.procs = [fake(10, "a", start=100, cpu=(2.0, 0.0)), fake(12, "b", start=100)]
    await env.poll()
    assert made == ["whole", "then"]
    assert sorted(tables[1].entries) == [10, 12] and tables[1].fields(10)["cpu_s"] == 2.0  # type: ignore[index]
