"""procstream.containers: container, pod and systemd unit from real shapes of
/proc/PID/cgroup (tests/fixtures/cgroup, read with the procfs cgroup parser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from procstream.containers import CgroupIdentity, identify, identify_path
from procstream.procfs.cgroup import parse_cgroup

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
EXPECTED: dict[str, dict[str, str | None]] = json.loads((FIXTURES / "expected.json").read_text())


def test_every_fixture_has_an_expectation() -> None:
    files = {p.name for p in FIXTURES.iterdir()} - {"expected.json", "README.md"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_identity(name: str) -> None:
    paths = parse_cgroup((FIXTURES / name).read_bytes())
    got = identify(paths)
    assert {k: v for k, v in got.as_dict().items() if k != "path"} == EXPECTED[name]
    assert got.path in paths
    assert got.in_container == (EXPECTED[name]["container_id"] is not None)


def test_cgroup_v1_takes_the_line_that_names_the_container() -> None:
    # a controller the runtime leaves alone stays at "/"; the unified line of a hybrid
    # host may name the daemon that started the container, not the container
    got = identify(parse_cgroup((FIXTURES / "docker-cgroupfs-v1").read_bytes()))
    assert got.path is not None and got.path.startswith("/docker/")


def test_hybrid_host_prefers_the_unified_line() -> None:
    got = identify(["/", "/system.slice/cron.service", "/system.slice/ssh.service"])
    assert got.systemd_unit == "ssh.service"  # the 0:: line comes last


def test_nothing_known() -> None:
    assert identify([]) == CgroupIdentity()
    assert identify_path("") == CgroupIdentity(path="")
    assert not identify(["/"]).in_container


def test_a_container_nested_in_a_systemd_unit_of_its_own() -> None:
    # systemd running inside a container: the container's scope, the inner unit
    cid = "ab" * 32
    got = identify_path(f"/system.slice/docker-{cid}.scope/system.slice/nginx.service")
    assert (got.runtime, got.container_id, got.systemd_unit) == ("docker", cid, "nginx.service")


@pytest.mark.parametrize(
    "path",
    [
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot_a_uid.slice",
        "/kubepods/burstable/pod12345",
        "/pod6ce1a3b2-5d4f-4e8a-9b7c-2f1e0d9c8b7a",  # a pod directory outside kubepods
        "/kubepods/burstable/pod6ce1a3b2-5d4f-4e8a-9b7c-2f1e0d9c8b7a-00",
    ],
)
def test_pod_look_alikes_are_not_pods(path: str) -> None:
    assert identify_path(path).pod_uid is None
