"""A small fleet for tests (not a test module): real ``serve --nats`` agents, each over a
fake /proc tree of its own and with its own host name, publishing to one real
nats-server, and real ``procstream fleet`` aggregators reading that stream.

Every process a test starts through a :class:`FleetWorld` is stopped by :meth:`close`
(use it as a context manager).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson

from tests.support.fake_proc_tree import add_proc, make_fake_proc, remove_proc
from tests.support.nats_servers import NatsServer, env_without_nats_secrets
from tests.support.served import Served, http_get

__all__ = ["Agent", "FleetWorld", "snapshot_of", "proc_keys"]

# Fake processes start this many clock ticks after the tree's boot: after any real
# fixture process, so a poll never takes them for older than it.
_START = 999_000
_pids = itertools.count(5000)


def snapshot_of(url: str, query: str = "") -> dict[str, Any]:
    status, body, _ = http_get(f"{url}/api/snapshot{query}")
    assert status == 200, body
    return orjson.loads(body)


def proc_keys(procs: list[dict[str, Any]]) -> set[tuple[int, float]]:
    return {(p["pid"], p["start_time"]) for p in procs}


class Agent:
    """One host: a fake /proc tree and the ``serve --nats`` reading it."""

    def __init__(self, world: FleetWorld, name: str) -> None:
        self.world = world
        self.name = name
        self.root = make_fake_proc(world.tmp / name)
        self.served: Served | None = None
        self.runs = 0

    def spawn(self, comm: str, *args: str) -> int:
        """A new process in this host's tree; its pid."""
        pid = next(_pids)
        add_proc(self.root, pid, comm=comm, cmdline=(comm, *args), start=_START + pid)
        return pid

    def vanish(self, pid: int) -> None:
        remove_proc(self.root, pid)

    def start(self, *extra: str, wait: bool = True) -> Agent:
        self.runs += 1
        w = self.world
        self.served = Served(
            "--procfs", str(self.root), "--interval", "0.2", "--source", "poll", "--nats", w.nats.url,
            "--host-name", self.name, "--nats-state-interval", "0.3", *extra,
            log=w.tmp / f"{self.name}.{self.runs}.log", env=env_without_nats_secrets(),
        ).start(wait=wait)
        return self

    def args(self, *extra: str) -> list[str]:
        """``serve``'s arguments for this host (to run it by hand)."""
        return ["--procfs", str(self.root), "--interval", "0.2", "--source", "poll", "--nats", self.world.nats.url,
                "--host-name", self.name, *extra]

    def snapshot(self) -> dict[str, Any]:
        assert self.served is not None
        return snapshot_of(self.served.url)

    def kill(self) -> None:
        assert self.served is not None
        self.served.kill()

    def stop(self) -> None:
        if self.served is not None and self.served.proc is not None and self.served.proc.poll() is None:
            self.served.kill()


class FleetWorld:
    """Agents and aggregators around one nats-server, in ``tmp``."""

    def __init__(self, tmp: Path, nats: NatsServer) -> None:
        self.tmp = tmp
        self.nats = nats
        self.agents: dict[str, Agent] = {}
        self.fleets: list[Served] = []

    def add_agent(self, name: str) -> Agent:
        agent = self.agents[name] = Agent(self, name)
        return agent

    def start_agents(self, *names: str, services: dict[str, tuple[str, ...]] | None = None,
                     extra: tuple[str, ...] = ()) -> list[Agent]:
        """Agents started side by side; ``services`` names extra processes per host
        (one per name, grouped by name); ``extra``: more ``serve`` options."""
        made = []
        for name in names:
            agent = self.add_agent(name)
            for comm in (services or {}).get(name, ()):
                agent.spawn(comm)
            made.append(agent.start(*extra, wait=False))
        for agent in made:
            assert agent.served is not None
            agent.served.wait_ready()
        return made

    def fleet(self, *extra: str, port: int | None = None, wait: bool = True) -> Served:
        """A ``procstream fleet`` on this stream (ready when returned, unless ``wait``
        is false)."""
        n = len(self.fleets) + 1
        served = Served("--nats", self.nats.url, "--host-name", f"agg-{n}", *extra, command="fleet",
                        port=port, log=self.tmp / f"fleet.{n}.log", env=env_without_nats_secrets())
        self.fleets.append(served)
        return served.start(wait=wait)

    def close(self) -> None:
        for served in self.fleets:
            if served.proc is not None and served.proc.poll() is None:
                served.kill()
        for agent in self.agents.values():
            agent.stop()

    def __enter__(self) -> FleetWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
