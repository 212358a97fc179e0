"""The package's layers: imports point downwards only, and there is no import cycle.

Layers, bottom up (a package covers its modules unless a module is listed itself):

0. ``procfs`` (reads /proc) and ``netlink`` (the kernel's process-event sockets):
   stdlib only, nothing of procstream outside their own package.
1. Pure helpers: ``_go`` (Go regexp/template ports), ``users``, ``config``, ``redact``,
   ``schema`` (the event types and their fields), ``stats`` (the shape of every counter
   set), ``containers`` (who runs a process, from its cgroup paths) and
   ``stream.protocol`` (the wire protocol, no I/O).
2. State across polls, pure and sync: ``tracker``, ``grouper`` (and ``threadgroups``, its
   per-thread-name counters), ``live`` (each process's numbers from two polls), ``events``,
   ``lifecycle`` (restarts, crash loops, expected groups: what the events' history tells).
3. ``collect`` (the core on its worker thread, and its two sources: polls and kernel
   events) and ``stream`` (sequence numbers, resume buffer, fan-out, event log, and the
   sink that feeds them).
4. ``fleet`` (NATS JetStream: the publisher ``serve --nats`` runs, ``tail nats://``,
   the aggregator ``fleet`` runs), then ``serve`` (HTTP and WebSocket server, security,
   metrics), ``tail`` (a client), ``wiring`` (what every command builds from its
   options). ``fleet`` imports none of the others of its layer, and nothing below it
   imports it.
5. The commands: ``serve.service`` (the composition root of ``procstream serve``),
   ``fleet.service`` (of ``procstream fleet``), ``once``.
6. ``cli``, then ``__main__``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "procstream"

LAYER: dict[str, int] = {
    "procstream": 0,
    "procstream.procfs": 0,
    "procstream.netlink": 0,
    "procstream._go": 1,
    "procstream.users": 1,
    "procstream.config": 1,
    "procstream.redact": 1,
    "procstream.schema": 1,
    "procstream.stats": 1,
    "procstream.containers": 1,
    "procstream.stream.protocol": 1,
    "procstream.tracker": 2,
    "procstream.grouper": 2,
    "procstream.threadgroups": 2,
    "procstream.live": 2,
    "procstream.events": 2,
    "procstream.lifecycle": 2,
    "procstream.collect": 3,
    "procstream.stream": 3,
    "procstream.fleet": 4,
    "procstream.serve": 4,
    "procstream.tail": 4,
    "procstream.wiring": 4,
    "procstream.serve.service": 5,
    "procstream.fleet.service": 5,
    "procstream.once": 5,
    "procstream.cli": 6,
    "procstream.__main__": 7,
}

_NO_IO = ("asyncio", "websockets")
_NO_PROC = ("procstream.procfs", "procstream.netlink", "procstream.tracker", "procstream.grouper", "procstream.collect")

# Specific bans on top of the layering; a package's own modules are always allowed.
BANNED: dict[str, tuple[str, ...]] = {
    "procstream.procfs": ("procstream.", *_NO_IO, "orjson", "yaml", "prometheus_client"),
    "procstream.netlink": ("procstream.", *_NO_IO),
    # pure state machines: no event loop, no network, no /proc internals
    "procstream.tracker": (*_NO_IO, "procstream.procfs.fs", "procstream.procfs._read"),
    "procstream.grouper": (*_NO_IO, "procstream.procfs.fs", "procstream.procfs._read"),
    "procstream.threadgroups": (*_NO_IO, "procstream.procfs.fs", "procstream.procfs._read"),
    "procstream.live": (*_NO_IO, "procstream.procfs.fs", "procstream.procfs._read"),
    "procstream.events": (*_NO_IO, "procstream.procfs.fs", "procstream.procfs._read"),
    "procstream.lifecycle": (*_NO_IO, "procstream.procfs"),
    "procstream.config": (*_NO_IO, "procstream.procfs"),
    "procstream._go": (*_NO_IO, "procstream."),
    # the vocabulary and the counters' shape: stdlib only, so every layer may use them
    "procstream.schema": (*_NO_IO, "procstream.", "orjson"),
    "procstream.stats": (*_NO_IO, "procstream.", "orjson"),
    # cgroup paths -> container, pod, unit: pure, stdlib only
    "procstream.containers": (*_NO_IO, "procstream."),
    "procstream.stream.protocol": (*_NO_IO,),
    # the stream and the server know nothing of /proc
    "procstream.stream": _NO_PROC,
    "procstream.serve.server": _NO_PROC,
    # NATS publishing reads the hub's buffer; it serves nothing and knows nothing of /proc
    "procstream.fleet": (*_NO_PROC, "procstream.serve", "procstream.tail", "procstream.wiring", "websockets"),
}


def within(imported: str, banned: str) -> bool:
    b = banned.rstrip(".")
    return imported == b or imported.startswith(b + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(PKG.rglob("*.py"))
NAMES = {module_name(p) for p in MODULES}


def layer_key(name: str) -> str:
    """The LAYER/BANNED entry a module falls under (the longest matching prefix)."""
    return max((k for k in LAYER if within(name, k)), key=len)


def imports_of(path: Path, name: str, modules: Iterable[str] = NAMES) -> list[str]:
    """Every module ``path`` imports, anywhere in it (functions too); ``from pkg import
    mod`` counts as importing ``pkg.mod`` when that is one of ``modules``."""
    known = set(modules)
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{alias.name}" for alias in node.names if f"{mod}.{alias.name}" in known]
            found.extend(subs)
            if len(subs) < len(node.names):
                found.append(mod)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        name = module_name(path)
        graph[name] = {m for m in imports_of(path, name) if m in NAMES and m != name}
    return graph


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG.parent)))
def test_imports_point_downwards(path: Path) -> None:
    name = module_name(path)
    key = layer_key(name)
    assert key != "procstream" or name == "procstream", f"{name} has no layer in LAYER: place it"
    own = LAYER[key]
    for imported in imports_of(path, name):
        inside_own_package = within(imported, key)
        for banned in BANNED.get(key, ()):
            if within(imported, banned) and not inside_own_package:
                pytest.fail(f"{name} imports {imported}, banned for {key}")
        if within(imported, "procstream"):
            target = layer_key(imported)
            assert LAYER[target] <= own, f"{name} (layer {own}) imports {imported} (layer {LAYER[target]})"


def test_there_is_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_every_module_is_placed() -> None:
    unplaced = [n for n in NAMES if layer_key(n) == "procstream" and n != "procstream"]
    assert unplaced == []


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from procstream.serve.server import x\nimport asyncio\n")
    assert imports_of(bad, "procstream.tracker") == ["procstream.serve.server", "asyncio"]
    assert LAYER[layer_key("procstream.serve.server")] > LAYER[layer_key("procstream.tracker")]
    assert within("asyncio.tasks", "asyncio") and within("procstream.procfs.fs", "procstream.procfs")
    assert not within("procstream.procfsx", "procstream.procfs")
    # a module listed on its own is not covered by its package's entry
    assert layer_key("procstream.stream.protocol") == "procstream.stream.protocol"
    assert layer_key("procstream.stream.hub") == "procstream.stream"


def test_the_checker_catches_a_cycle(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from .b import run\n")
    b.write_text("def f():\n    from . import a\n")
    names = {"pkg.a", "pkg.b"}
    graph = {
        "pkg.a": set(imports_of(a, "pkg.a", names)) & names,
        "pkg.b": set(imports_of(b, "pkg.b", names)) & names,
        "pkg.c": {"pkg.a"},
    }
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert cycles({"x": {"y"}, "y": set()}) == []
