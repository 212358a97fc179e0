"""README.md's first two commands work as written, CI runs the second one exactly, and
the README's example client reports what it says.

The install test takes the commands out of README.md (so they can't drift from what is
tested) and runs them in a copy of this checkout, in ``sh``, step by step as written,
with three differences, all about the machine rather than the commands:

- the ``apt-get`` steps are not run: they need the network and change the host (the
  packages they install are what the rest of the suite, and this test, already use);
- ``python3`` is the interpreter running the tests (a shim first on ``PATH``), so the
  packages below match it;
- pip installs offline, from a wheelhouse made of the distributions installed in the
  running environment (``pip install`` of the checkout resolves its dependencies and
  build requirements there, nowhere else).

The last step runs too: ``procstream serve`` on a free port (the only flag added), until
the viewer answers; ``python -m pytest`` on one cheap module of the copy (running the
whole suite from inside itself would be a loop).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from procstream.netlink import connector as netlink
from tests.support.network import free_port
from tests.support.processes import running, stop
from tests.support.served import Served, http_get
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"

SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
PY_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def readme_commands() -> tuple[str, str]:
    """README's first two ``sh`` blocks: install-and-serve, and the test command."""
    blocks = SH_BLOCK.findall(README.read_text())
    assert len(blocks) >= 2, "README.md lost its two commands"
    return blocks[0].strip(), blocks[1].strip()


def steps(command: str) -> list[str]:
    """The ``&&`` steps of a command (a line ending in ``&&`` goes on on the next)."""
    joined = " ".join(line.strip() for line in command.splitlines())
    assert "\n" not in joined and ";" not in joined and "||" not in joined, command
    return [s.strip() for s in joined.split("&&")]


# -- what CI runs --------------------------------------------------------------------------


def test_ci_runs_exactly_readmes_test_command() -> None:
    _, test_command = readme_commands()
    ci = CI.read_text()
    # the command as a block of its own lines, not in a comment, and the last thing run
    code = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "\n".join(code[-len(test_command.splitlines()):]) == test_command
    assert code.index("export PROCSTREAM_REQUIRE_BROWSER=1") < len(code) - len(test_command.splitlines())
    r = subprocess.run(["bash", "-n", str(CI)], capture_output=True)
    assert r.returncode == 0, r.stderr


def test_readme_commands_say_what_they_need() -> None:
    serve_command, test_command = readme_commands()
    for command in (serve_command, test_command):
        parts = steps(command)
        assert "python3 -m venv .venv" in parts and ". .venv/bin/activate" in parts
        assert parts.index("python3 -m venv .venv") < parts.index(". .venv/bin/activate")
        # no pip before the environment exists: the system Python refuses it
        assert all(parts.index(p) > parts.index(". .venv/bin/activate") for p in parts if p.startswith("pip"))
        assert any("python3-venv" in p for p in parts if "apt-get install" in p)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11" and "Python ≥ 3.11" in README.read_text()


# -- the install steps, for real -------------------------------------------------------------


def _closure(roots: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions ``roots`` (requirement strings) need, transitively."""
    found: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise AssertionError(f"{req} is needed to install the checkout offline, but is not "
                                 f"installed here (pip install -e '.[test]')") from None
        assert req.specifier.contains(dist.version, prereleases=True), (
            f"{req} is needed, {dist.version} is installed")
        found[name] = dist
        for dep in map(Requirement, dist.requires or []):
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(dep)
    return found


def _repack(dist: md.Distribution, into: Path) -> Path:
    """A wheel of an installed distribution: its files as RECORD lists them, its tags as
    its WHEEL file says (file modes kept, so executables stay executable)."""
    info = Path(str(dist._path))  # type: ignore[attr-defined]  # the .dist-info directory
    wheel_meta = (info / "WHEEL").read_text()
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    assert tags, f"{info} names no wheel tag"
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    path = into / f"{name}-{dist.version}-{'-'.join('.'.join(p) for p in parts)}.whl"
    record: list[str] = []
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for f in dist.files or []:
            if ".." in f.parts or "__pycache__" in f.parts or (f.parent.name == info.name and f.name in skip):
                continue  # scripts (made again from entry_points.txt), bytecode, install records
            src = Path(str(dist.locate_file(f)))
            if not src.is_file():
                continue
            data = src.read_bytes()
            zi = zipfile.ZipInfo(f.as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr = (src.stat().st_mode & 0xFFFF) << 16
            zf.writestr(zi, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f.as_posix()},sha256={digest},{len(data)}")
        record.append(f"{info.name}/RECORD,,")
        zf.writestr(f"{info.name}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of everything ``pip install -e '.[test]'`` of the checkout needs, made from
    this environment: the project's dependencies with its test extra, and its build
    requirements."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["test"],
             *project["build-system"]["requires"]]
    roots = [r for r in roots if Requirement(r).marker is None or Requirement(r).marker.evaluate()]
    into = tmp_path_factory.mktemp("wheelhouse")
    for dist in _closure(roots).values():
        _repack(dist, into)
    return into


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of this checkout as a user would clone it (no environments, no caches)."""
    dst = tmp_path / "procstream"
    shutil.copytree(ROOT, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".ruff_cache"))
    return dst


def _environment(tmp: Path, wheelhouse: Path) -> dict[str, str]:
    shim = tmp / "shim"
    shim.mkdir()
    base = getattr(sys, "_base_executable", sys.executable)
    (shim / "python3").symlink_to(base)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{shim}:{env.get('PATH', '/usr/bin:/bin')}", PIP_CONFIG_FILE=os.devnull,
               PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse), PIP_CACHE_DIR=str(tmp / "pip-cache"),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_PROGRESS_BAR="off")
    return env


def _script(command: str, last: str) -> str:
    """The command's steps as written, apt-get ones left out, the last one replaced."""
    kept = [s for s in steps(command) if "apt-get" not in s]
    return " && ".join([*kept[:-1], last])


def test_first_command_installs_and_serves(wheelhouse: Path, checkout: Path, tmp_path: Path) -> None:
    serve_command, _ = readme_commands()
    last = steps(serve_command)[-1]
    assert last == "procstream serve"
    port = free_port()
    log = tmp_path / "out.log"
    script = _script(serve_command, f"exec {last} --listen 127.0.0.1:{port}")
    with open(log, "wb") as out, running("sh", "-c", script, cwd=checkout, stdout=out, stderr=subprocess.STDOUT,
                                         env=_environment(tmp_path, wheelhouse), group=True) as proc:

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the command ended with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                return http_get(f"http://127.0.0.1:{port}/", timeout=1)[0] == 200
            except OSError:
                return False

        wait_for("the viewer to answer", answers, timeout=180, step=0.2)
        status, body, _ = http_get(f"http://127.0.0.1:{port}/")
        assert b"<html" in body.lower()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0  # the shell exec'd into procstream serve
    assert (checkout / ".venv" / "bin" / "procstream").exists()


def test_test_command_installs_the_test_dependencies(wheelhouse: Path, checkout: Path, tmp_path: Path) -> None:
    _, test_command = readme_commands()
    last = steps(test_command)[-1]
    assert last == "python -m pytest"
    script = _script(test_command, f"{last} -q -p no:cacheprovider tests/test_layers.py")
    r = subprocess.run(["sh", "-c", script], cwd=checkout, env=_environment(tmp_path, wheelhouse),
                       capture_output=True, timeout=240)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    assert r.returncode == 0, out[-3000:]
    assert re.search(r"\d+ passed", out), out[-3000:]
    # the editable install points at the copy: what the suite tests is the checkout
    venv_python = checkout / ".venv" / "bin" / "python"
    where = subprocess.run([str(venv_python), "-I", "-c", "import procstream, playwright, pytest_asyncio; "
                            "print(procstream.__file__)"], capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(checkout)


# -- the example client ------------------------------------------------------------------------

KERNEL, WHY = netlink.probe("/proc")


@pytest.mark.skipif(not KERNEL, reason=f"exit codes need the kernel event source: {WHY}")
def test_example_client_reports_exit_codes_and_signals(tmp_path: Path) -> None:
    blocks = PY_BLOCK.findall(README.read_text())
    client = next(b for b in blocks if "websockets" in b and "proc.exit" in b)
    assert "ws://127.0.0.1:8765/ws" in client
    marker = f"readme-client-{os.getpid()}"
    config = tmp_path / "config.yml"
    config.write_text(f"process_names:\n  - name: mine\n    cmdline: ['{marker}']\n")
    with Served("--source", "netlink", "--interval", "0.2", "--config", str(config),
                log=tmp_path / "serve.log") as srv:
        code = client.replace("ws://127.0.0.1:8765/ws", srv.ws)
        out = tmp_path / "client.out"
        with open(out, "wb") as fo, running(sys.executable, "-u", "-c", code, stdout=fo,
                                            stderr=subprocess.STDOUT) as cli:
            wait_for("the client to subscribe", lambda: _subscribers(srv) == 1, timeout=20)
            # each lives long enough for its command line to be read at its exec
            ok = subprocess.Popen(["sh", "-c", "sleep 0.5; exit 0", marker])
            failed = subprocess.Popen(["sh", "-c", "sleep 0.5; exit 3", marker])
            killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
            wait_for("the sleeper to be tracked",
                     lambda: f'"pid":{killed.pid},' in http_get(srv.url + "/api/snapshot")[1].decode())
            killed.send_signal(signal.SIGKILL)
            for p in (ok, failed, killed):
                p.wait(10)
            wait_for("both reports", lambda: out.read_text().count("\n") >= 2, timeout=20,
                     explain=lambda: out.read_text())
            stop(cli)
        lines = out.read_text().splitlines()
    assert sorted(lines) == sorted([f"mine {failed.pid} exited with 3",
                                    f"mine {killed.pid} killed by signal 9"]), lines


def _subscribers(srv: Served) -> int:
    body = http_get(srv.url + "/metrics")[1].decode()
    return int(float(next(x for x in body.splitlines() if x.startswith("procstream_subscribers ")).split()[1]))
