"""Container, service and wheel packaging say what they must.

The wheel is built from a copy of the source tree and installed into a throwaway venv.
No Docker engine runs here: the Dockerfile and the compose file are parsed and checked,
the Dockerfile's health check command is run against a stub HTTP server, and the systemd
unit is checked directive by directive and, where the tool exists, by
``systemd-analyze verify`` and ``systemd-analyze security``.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import re
import shlex
import shutil
import site
import subprocess
import sys
import threading
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
UNIT = ROOT / "packaging" / "procstream.service"
DEFAULTS = ROOT / "packaging" / "procstream.default"
LOGROTATE = ROOT / "packaging" / "logrotate.conf"
DOCS = ROOT / "docs"

NEEDED_CAPS = {"CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}
NETLINK_CAP = "CAP_NET_ADMIN"


# -- small parsers ----------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        word, _, rest = logical.partition(" ")
        out.append((word.upper(), rest.strip()))
        logical = ""
    assert not logical, "dangling line continuation"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd unit file → {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (quotes removed)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"bad line: {raw}"
        values[key] = " ".join(shlex.split(value))
    return values


def logrotate_blocks(text: str) -> dict[str, list[str]]:
    """{path pattern: directive lines}, scripts kept as lines between their markers."""
    blocks: dict[str, list[str]] = {}
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    i = 0
    while i < len(lines):
        header = lines[i]
        assert header.endswith("{"), f"expected a block: {header}"
        body: list[str] = []
        i += 1
        while lines[i] != "}":
            body.append(lines[i])
            i += 1
        blocks[header[:-1].strip()] = body
        i += 1
    return blocks


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


# -- Dockerfile --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def only(instructions: list[tuple[str, str]], name: str) -> str:
    found = [args for word, args in instructions if word == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def test_dockerfile_base_entrypoint_cmd_expose(dockerfile: list[tuple[str, str]]) -> None:
    words = [w for w, _ in dockerfile]
    assert words[0] == "FROM" and only(dockerfile, "FROM") == "python:3.11-slim"
    assert exec_form(only(dockerfile, "ENTRYPOINT")) == ["procstream"]
    assert exec_form(only(dockerfile, "CMD")) == [
        "serve", "--procfs", "/host/proc", "--listen", "0.0.0.0:8765",
    ]
    assert only(dockerfile, "EXPOSE").split() == ["8765"]
    # runs as root on purpose (capabilities), said explicitly
    assert [args for w, args in dockerfile if w == "USER"] == ["root"]


def test_dockerfile_installs_the_package_from_the_source_tree(dockerfile: list[tuple[str, str]]) -> None:
    runs = [args for w, args in dockerfile if w == "RUN"]
    assert any(re.search(r"\bpip install (\S+ )*\.(\s|$)", r) for r in runs), runs
    copied: list[str] = []
    for word, args in dockerfile:
        if word == "COPY":
            *sources, _dest = args.split()
            copied += sources
    # every source without a wildcard must exist (a wildcard may match nothing)
    for src in copied:
        if not any(c in src for c in "*?["):
            assert (ROOT / src).exists(), src
    assert {"pyproject.toml", "procstream", "web"} <= set(copied)
    tomllib.loads((ROOT / "pyproject.toml").read_text())  # what pip will read


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", "tests"} <= ignored
    assert not {"procstream", "web", "pyproject.toml"} & ignored


def healthcheck_code(args: str) -> str:
    options, _, command = args.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"] and len(argv) == 3, argv
    return argv[2]


class _Stub(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != "/healthz":
            self.send_error(404)
            return
        body = b'{"ok": true}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[tuple[http.server.HTTPServer, type[_Stub]]]:
    handler = type("Handler", (_Stub,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_check(code: str, port: int) -> int:
    # The check targets the image's fixed port; here the stub's ephemeral port stands in.
    assert "http://127.0.0.1:8765/healthz" in code
    probe = code.replace(":8765/", f":{port}/")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=20)
    return done.returncode


def test_dockerfile_healthcheck_works_against_a_server(
    dockerfile: list[tuple[str, str]], stub_server: tuple[http.server.HTTPServer, type[_Stub]]
) -> None:
    code = healthcheck_code(only(dockerfile, "HEALTHCHECK"))
    compile(code, "<healthcheck>", "exec")
    server, handler = stub_server
    port = server.server_address[1]
    assert run_check(code, port) == 0  # healthy
    handler.status = 503
    assert run_check(code, port) != 0  # stale polls
    server.shutdown()
    server.server_close()
    assert run_check(code, port) != 0  # nothing listening


# -- docker compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def caps(service: dict) -> set[str]:
    return {c if c.startswith("CAP_") else f"CAP_{c}" for c in service.get("cap_add", [])}


def test_compose_default_service(compose: dict) -> None:
    svc = compose["services"]["procstream"]
    assert svc["build"] == "."
    assert svc["pid"] == "host"
    assert "/proc:/host/proc:ro" in svc["volumes"]
    assert svc["ports"] == ["127.0.0.1:8765:8765"]
    assert "network_mode" not in svc
    assert svc["environment"]["PROCSTREAM_TOKEN"] == "${PROCSTREAM_TOKEN:?set a token}"
    assert svc["cap_drop"] == ["ALL"] and caps(svc) == NEEDED_CAPS
    assert "no-new-privileges:true" in svc["security_opt"]
    assert svc["read_only"] is True
    assert svc["restart"] in ("unless-stopped", "always", "on-failure")
    cmd = svc["command"]
    assert cmd[:5] == ["serve", "--procfs", "/host/proc", "--listen", "0.0.0.0:8765"]


def test_compose_healthcheck_matches_the_image(compose: dict, dockerfile: list[tuple[str, str]]) -> None:
    image_code = healthcheck_code(only(dockerfile, "HEALTHCHECK"))
    for name, svc in compose["services"].items():
        if svc.get("build") != ".":
            continue  # not our image (the nats service)
        test = svc["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert test[3] == image_code, name
        assert svc["healthcheck"]["interval"] and svc["healthcheck"]["retries"] >= 1


def test_compose_netlink_service(compose: dict) -> None:
    svc = compose["services"]["procstream-netlink"]
    assert svc["profiles"] == ["netlink"]  # opt-in: `docker compose --profile netlink up`
    assert svc["network_mode"] == "host"
    assert "ports" not in svc  # meaningless with the host network
    assert caps(svc) == NEEDED_CAPS | {NETLINK_CAP}
    assert svc["pid"] == "host" and "/proc:/host/proc:ro" in svc["volumes"]
    assert svc["environment"]["PROCSTREAM_TOKEN"] == "${PROCSTREAM_TOKEN:?set a token}"
    cmd = svc["command"]
    assert cmd[cmd.index("--listen") + 1] == "127.0.0.1:8765"  # host loopback only
    assert cmd[cmd.index("--source") + 1] == "netlink"


def test_compose_fleet_profile(compose: dict) -> None:
    nats = compose["services"]["nats"]
    assert nats["profiles"] == ["fleet"] and nats["image"].startswith("nats:")
    cmd = nats["command"]
    assert "-js" in cmd  # JetStream on...
    store = cmd[cmd.index("-sd") + 1]
    volume, _, path = nats["volumes"][0].partition(":")
    assert path == store and volume in compose["volumes"]  # ...with its store in a named volume
    assert nats["healthcheck"]["test"][0] == "CMD" and "/healthz" in " ".join(nats["healthcheck"]["test"])
    svc = compose["services"]["procstream-fleet"]
    assert svc["profiles"] == ["fleet"] and svc["build"] == "."
    assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
    cmd = svc["command"]
    assert cmd[cmd.index("--nats") + 1] == "nats://nats:4222"
    assert svc["uts"] == "host"  # the events' host is the machine's name
    assert caps(svc) == NEEDED_CAPS and svc["cap_drop"] == ["ALL"] and svc["read_only"] is True
    assert svc["environment"]["PROCSTREAM_TOKEN"] == "${PROCSTREAM_TOKEN:?set a token}"
    assert "docker compose --profile fleet up" in (DOCS / "deploy.md").read_text()


def _descriptors_needed(max_clients: int = 1024) -> int:
    from procstream.serve.resources import FD_RESERVE
    from procstream.serve.server import ServerConfig

    return ServerConfig(max_clients=max_clients).descriptors + FD_RESERVE


def test_compose_allows_the_descriptors_the_default_clients_need(compose: dict) -> None:
    for name, svc in compose["services"].items():
        if not svc["image"].startswith("procstream"):
            continue  # NATS has its own needs
        nofile = svc["ulimits"]["nofile"]
        assert nofile["soft"] == nofile["hard"] >= _descriptors_needed(), name


def test_compose_never_publishes_beyond_loopback(compose: dict) -> None:
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        if svc.get("network_mode") == "host":
            cmd = svc["command"]
            assert cmd[cmd.index("--listen") + 1].startswith("127.0.0.1:"), name


# -- systemd unit ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return unit_directives(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def test_unit_runs_procstream_serve(unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(unit, "Service", "Type") == "simple"
    start = one(unit, "Service", "ExecStart").split()
    assert start[:2] == ["/usr/local/bin/procstream", "serve"]
    assert one(unit, "Service", "EnvironmentFile") == "-/etc/default/procstream"
    reload = one(unit, "Service", "ExecReload").split()
    assert Path(reload[0]).name == "kill" and reload[1:] == ["-HUP", "$MAINPID"]
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_user_and_capabilities(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = unit["Service"]
    assert one(unit, "Service", "User") == "procstream"
    assert "DynamicUser" not in svc
    wanted = NEEDED_CAPS | {NETLINK_CAP}
    assert set(one(unit, "Service", "AmbientCapabilities").split()) == wanted
    assert set(one(unit, "Service", "CapabilityBoundingSet").split()) == wanted


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("LogsDirectory", "procstream"),
        ("ReadWritePaths", "/var/log/procstream"),
        ("SystemCallArchitectures", "native"),
    ],
)
def test_unit_hardening(unit: dict[str, dict[str, list[str]]], key: str, value: str) -> None:
    assert one(unit, "Service", key) == value


def test_unit_keeps_proc_visible(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = unit["Service"]
    for key in ("ProtectProc", "ProcSubset", "PrivateUsers", "PrivatePIDs", "PrivateNetwork"):
        assert key not in svc, key
    families = set(one(unit, "Service", "RestrictAddressFamilies").split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"} == families


def test_unit_allows_the_descriptors_the_default_clients_need(unit: dict[str, dict[str, list[str]]]) -> None:
    # systemd's default soft limit is 1024: below what --max-clients 1024 needs
    assert int(one(unit, "Service", "LimitNOFILE")) >= _descriptors_needed() > 1024


def test_default_env_file_feeds_the_unit(unit: dict[str, dict[str, list[str]]]) -> None:
    text = DEFAULTS.read_text()
    env = env_file(text)
    assert "$PROCSTREAM_OPTS" in one(unit, "Service", "ExecStart")
    opts = shlex.split(env["PROCSTREAM_OPTS"])
    assert opts[opts.index("--listen") + 1].startswith("127.0.0.1:")
    log = opts[opts.index("--event-log") + 1]
    assert log.startswith(one(unit, "Service", "ReadWritePaths") + "/")
    # the token is documented but never shipped with a value
    assert "PROCSTREAM_TOKEN" not in env
    assert re.search(r"^#\s*PROCSTREAM_TOKEN=\s*$", text, re.M)


def test_logrotate_moves_then_reloads() -> None:
    blocks = logrotate_blocks(LOGROTATE.read_text())
    assert list(blocks) == ["/var/log/procstream/*.ndjson"]
    body = blocks["/var/log/procstream/*.ndjson"]
    opts = shlex.split(env_file(DEFAULTS.read_text())["PROCSTREAM_OPTS"])
    assert fnmatch.fnmatch(opts[opts.index("--event-log") + 1], "/var/log/procstream/*.ndjson")
    assert "su procstream procstream" in body
    assert "copytruncate" not in body and not any(ln.startswith("create") for ln in body)
    script = body[body.index("postrotate") + 1 : body.index("endscript")]
    assert any("systemctl reload procstream.service" in ln for ln in script)


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit_copy = tmp_path / "procstream.service"
    shutil.copy(UNIT, unit_copy)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit_copy)],
        capture_output=True, text=True, timeout=60,
    )
    problems = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    # The one finding that depends on this machine, not on the unit: the program is
    # installed by the deploy steps, not here. It is tolerated only while truly absent.
    if not Path("/usr/local/bin/procstream").exists():
        missing = "Command /usr/local/bin/procstream is not executable: No such file or directory"
        problems = [ln for ln in problems if missing not in ln]
    assert problems == []


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_security_exposure_is_low(tmp_path: Path) -> None:
    unit_copy = tmp_path / "procstream.service"
    shutil.copy(UNIT, unit_copy)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit_copy)],
        capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for procstream\.service: (\d+\.\d+)", done.stdout + done.stderr)
    assert m, done.stdout[-500:] + done.stderr[-500:]
    assert float(m.group(1)) <= 3.0


# -- docs --------------------------------------------------------------------------------------


def test_docs_exist_and_their_configs_parse() -> None:
    shipping = (DOCS / "shipping.md").read_text()
    deploy = (DOCS / "deploy.md").read_text()
    for needle in ("Vector", "Fluent Bit", "procstream tail", "--event-log"):
        assert needle in shipping, needle
    for needle in ("docker compose up", "systemctl", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_NET_ADMIN"):
        assert needle in deploy, needle
    parsed = 0
    for lang, body in fenced_blocks(shipping) + fenced_blocks(deploy):
        if lang == "yaml":
            assert isinstance(yaml.safe_load(body), dict)
            parsed += 1
        elif lang == "json":
            json.loads(body)
            parsed += 1
    assert parsed >= 5


def test_vector_and_fluent_bit_recipes_tail_the_event_log() -> None:
    blocks = {i: yaml.safe_load(b) for i, (lang, b) in enumerate(fenced_blocks((DOCS / "shipping.md").read_text())) if lang == "yaml"}
    log = "/var/log/procstream/events.ndjson"
    vector = next(b for b in blocks.values() if "sources" in b and any(s.get("type") == "file" for s in b["sources"].values()))
    (source_name, source), = [(k, s) for k, s in vector["sources"].items() if s["type"] == "file"]
    assert source["include"] == [log]
    remap = next(t for t in vector["transforms"].values() if t["type"] == "remap")
    assert remap["inputs"] == [source_name] and "parse_json!" in remap["source"]
    fluent = next(b for b in blocks.values() if "pipeline" in b)
    (tail,) = [i for i in fluent["pipeline"]["inputs"] if i["name"] == "tail"]
    assert tail["path"] == log
    assert tail["parser"] in {p["name"] for p in fluent["parsers"] if p["format"] == "json"}


# -- the wheel ---------------------------------------------------------------------------------

PACKAGE = ROOT / "procstream"
WEB = ROOT / "web"


def listed_packages() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def files_under(top: Path) -> dict[str, bytes]:
    """{path relative to top: content}, bytecode caches left out."""
    return {
        p.relative_to(top).as_posix(): p.read_bytes()
        for p in sorted(top.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools reuses a build/ directory left in the tree, and a stale
    # one could hold files the mapping no longer produces.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("procstream", "web"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(src)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = out.glob("procstream-*.whl")
    return built


def test_every_package_directory_is_listed() -> None:
    # The list is explicit (discovery can't map web/ to procstream/web), so a new
    # subpackage is only shipped once it is added there.
    found = {
        ".".join(d.relative_to(ROOT).parts)
        for d in [PACKAGE, *PACKAGE.rglob("*")]
        if d.is_dir() and any(d.glob("*.py"))
    }
    listed = set(listed_packages())
    assert found - listed == set(), "missing from [tool.setuptools] packages in pyproject.toml"
    assert listed - found == {"procstream.web"}, "listed but not a package directory"


def test_wheel_holds_the_viewer_and_every_module(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        web = files_under(WEB)
        assert web, "web/ is empty"
        for rel, content in web.items():
            member = f"procstream/web/{rel}"
            assert member in names, f"{member} is missing from the wheel"
            assert z.read(member) == content, member
    modules = {f"procstream/{rel}" for rel in files_under(PACKAGE) if rel.endswith(".py")}
    assert modules - names == set()


def test_installed_wheel_serves_its_own_viewer(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install",
         "--no-deps", "--no-index", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # The dependencies come from this interpreter's site-packages, appended as plain paths:
    # no .pth in them is processed, so an editable procstream there stays invisible.
    (site_packages,) = (env_dir / "lib").glob("python*/site-packages")
    (site_packages / "test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    probe = (
        "import json, procstream, procstream.serve.server as s; "
        "print(json.dumps([procstream.__file__, str(s.DEFAULT_WEB_DIR)]))"
    )
    # -I: neither the working directory nor PYTHONPATH may put the checkout on the path.
    done = subprocess.run(
        [str(python), "-I", "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    package_file, web_dir = json.loads(done.stdout)
    installed = site_packages / "procstream"
    assert Path(package_file) == installed / "__init__.py"
    assert Path(web_dir) == installed / "web"
    assert files_under(Path(web_dir)) == files_under(WEB)
