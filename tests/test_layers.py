"""Imports point downwards only (DESIGN §1). Every module must be placed in a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "procstream"

# Layer of each module: a module may import procstream modules of its own layer or below,
# minus the explicit bans further down. A new module must be added here on purpose.
LAYER: dict[str, int] = {
    "procstream": 0,
    "procstream.procfs": 0,
    "procstream.nlsocket": 0,
    "procstream.netlink": 0,
    "procstream.taskstats": 0,
    "procstream.users": 1,
    "procstream.gotemplate": 1,
    "procstream.goregex": 1,
    "procstream.config": 1,
    "procstream.redact": 1,
    "procstream.protocol": 1,
    "procstream.tracker": 2,
    "procstream.grouper": 2,
    "procstream.events": 2,
    "procstream.poller": 3,
    "procstream.hub": 3,
    "procstream.fanout": 3,
    "procstream.eventlog": 3,
    "procstream.kernel": 3,
    "procstream.server": 4,
    "procstream.metrics": 4,
    "procstream.security": 4,
    "procstream.tail": 4,
    "procstream.once": 5,
    "procstream.app": 5,
    "procstream.cli": 5,
    "procstream.__main__": 6,
}

# Specific bans on top of the layering (DESIGN §1).
BANNED: dict[str, tuple[str, ...]] = {
    # /proc readers: stdlib only, nothing of procstream but their own package
    "procstream.procfs": ("procstream.", "asyncio", "websockets", "orjson", "yaml", "prometheus_client"),
    # kernel sockets: stdlib only; the two sources share nlsocket's mechanics, nothing else
    "procstream.nlsocket": ("procstream.", "asyncio", "websockets"),
    "procstream.netlink": ("procstream.", "asyncio", "websockets"),
    "procstream.taskstats": ("procstream.", "asyncio", "websockets"),
    # pure state machines: no event loop, no network, no /proc internals
    "procstream.tracker": ("asyncio", "websockets", "procstream.procfs.fs", "procstream.procfs._read"),
    "procstream.grouper": ("asyncio", "websockets", "procstream.procfs.fs", "procstream.procfs._read"),
    "procstream.events": ("asyncio", "websockets", "procstream.procfs.fs", "procstream.procfs._read"),
    "procstream.config": ("asyncio", "websockets", "procstream.procfs"),
    "procstream.goregex": ("asyncio", "websockets", "procstream.procfs"),
    "procstream.gotemplate": ("asyncio", "websockets", "procstream.procfs"),
    # the server knows nothing of /proc
    "procstream.server": ("procstream.procfs", "procstream.tracker", "procstream.grouper", "procstream.poller"),
    "procstream.hub": ("procstream.procfs", "procstream.tracker", "procstream.grouper", "procstream.poller"),
}

# Exceptions to BANNED, named one by one: what a banned module may import all the same.
ALLOWED: dict[str, tuple[str, ...]] = {
    "procstream.netlink": ("procstream.nlsocket",),
    "procstream.taskstats": ("procstream.nlsocket",),
}


def within(imported: str, banned: str) -> bool:
    b = banned.rstrip(".")
    return imported == b or imported.startswith(b + ".")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_key(name: str) -> str:
    """The LAYER/BANNED entry a module falls under (a package covers its submodules)."""
    candidates = [k for k in LAYER if name == k or name.startswith(k + ".")]
    return max(candidates, key=len)


def imports_of(path: Path, name: str) -> list[str]:
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
                if node.module is None:
                    found.extend(f"{mod}.{alias.name}" for alias in node.names)
                else:
                    found.append(mod)
            else:
                found.append(node.module or "")
    return found


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG.parent)))
def test_imports_point_downwards(path: Path) -> None:
    name = module_name(path)
    key = layer_key(name)
    assert key != "procstream" or name == "procstream", f"{name} has no layer in LAYER: place it"
    own = LAYER[key]
    for imported in imports_of(path, name):
        inside_own_package = imported == key or imported.startswith(key + ".")
        allowed = any(within(imported, ok) for ok in ALLOWED.get(key, ()))
        for banned in BANNED.get(key, ()):
            if within(imported, banned) and not inside_own_package and not allowed:
                pytest.fail(f"{name} imports {imported}, banned for {key}")
        if imported == "procstream" or imported.startswith("procstream."):
            target = layer_key(imported)
            assert LAYER[target] <= own, f"{name} (layer {own}) imports {imported} (layer {LAYER[target]})"


def test_every_module_is_placed() -> None:
    unplaced = [module_name(p) for p in MODULES if layer_key(module_name(p)) == "procstream" and module_name(p) != "procstream"]
    assert unplaced == []


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from procstream.server import x\nimport asyncio\n")
    assert imports_of(bad, "procstream.tracker") == ["procstream.server", "asyncio"]
    assert within("asyncio.tasks", "asyncio") and within("procstream.procfs.fs", "procstream.procfs")
    assert not within("procstream.procfsx", "procstream.procfs")
    # an exception lets one module through, not its neighbours
    assert within("procstream.nlsocket", ALLOWED["procstream.netlink"][0])
    assert not any(within("procstream.taskstats", ok) for ok in ALLOWED["procstream.netlink"])
    assert LAYER[layer_key("procstream.server")] > LAYER["procstream.tracker"]
