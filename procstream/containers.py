"""Who runs a process, told by its cgroup paths: container, Kubernetes pod, systemd unit.

Container runtimes and systemd put every process in a cgroup whose path names what it
belongs to, in a few well-known shapes (cgroup v2's one ``0::PATH`` line, or any of cgroup
v1's per-controller lines):

- Docker: ``/system.slice/docker-ID.scope`` (systemd cgroup driver), ``/docker/ID``
  (cgroupfs driver; nested for Docker in Docker);
- containerd: ``cri-containerd-ID.scope`` under a Kubernetes pod, ``nerdctl-ID.scope``,
  or its namespace's directory (``/default/ID``, ``/k8s.io/ID``);
- CRI-O: ``crio-ID.scope`` (``crio-conmon-ID.scope`` is its monitor, not the container);
- Podman: ``libpod-ID.scope`` (``libpod-conmon-ID.scope`` is its monitor), ``/libpod_parent/libpod-ID``;
- LXC: ``/lxc.payload.NAME``, ``/lxc/NAME``;
- Kubernetes: the pod's cgroup, ``kubepods-QOS-podUID.slice`` (systemd; the UID's dashes
  are underscores there) or ``/kubepods/QOS/podUID`` (cgroupfs), under which each
  container has its own; a Guaranteed pod sits directly under ``kubepods`` with no QoS
  level. ``kubelet --cgroup-root`` may prefix the names (``kubelet-kubepods-...``), as kind
  does;
- systemd: the unit (``.service`` or ``.scope``) and the slice it runs in.

Only the paths are read, never a runtime: an ID is a label, not a verified container.
Cgroup names under a user's delegated subtree (``user@UID.service/...``) are chosen by that
user, who can make a process look like a container; treat the result as a hint. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CgroupIdentity", "identify", "identify_path"]

#: Container IDs of Docker, containerd, CRI-O and Podman: 64 hex digits.
_ID: Final = r"[0-9a-f]{64}"
# Scope units of container runtimes: prefix -> runtime. A prefix's "conmon" variant (the
# runtime's monitor process) is not the container.
_SCOPES: Final = re.compile(rf"^(docker|cri-containerd|crio|libpod|nerdctl)-({_ID})\.scope$")
_SCOPE_RUNTIME: Final = {
    "docker": "docker",
    "cri-containerd": "containerd",
    "nerdctl": "containerd",
    "crio": "cri-o",
    "libpod": "podman",
}
# A bare ID as a directory, and the parent directories that tell its runtime.
_BARE_ID: Final = re.compile(rf"^(?:libpod-)?({_ID})$")
_PARENT_RUNTIME: Final = {
    "docker": "docker",
    "default": "containerd",
    "k8s.io": "containerd",
    "libpod_parent": "podman",
}
_LXC_PAYLOAD: Final = re.compile(r"^lxc\.payload\.(.{1,253})$")
# Kubernetes pods: systemd driver "kubepods[-qos]-pod<uid>.slice" (uid with _), optionally
# after a --cgroup-root prefix; cgroupfs driver "pod<uid>" below "kubepods[/qos]".
_POD_SLICE: Final = re.compile(r"^(?:.*-)?kubepods(?:-(burstable|besteffort))?-pod([0-9a-f_]{32,36})\.slice$")
_POD_DIR: Final = re.compile(r"^pod([0-9a-f-]{32,36})$")
_QOS: Final = {"burstable": "Burstable", "besteffort": "BestEffort", None: "Guaranteed"}
_UNIT_SUFFIXES: Final = (".service", ".scope")
# Longest unit or slice name reported (systemd's own limit on a unit name is 255).
_MAX_NAME: Final = 256


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    """What a process's cgroup paths say about it; None where they say nothing."""

    #: ``docker``, ``containerd``, ``cri-o``, ``podman``, ``lxc``; None for a container
    #: whose runtime the path doesn't tell (a Kubernetes pod's under the cgroupfs driver)
    runtime: str | None = None
    #: the container's ID (64 hex digits), or an LXC container's name
    container_id: str | None = None
    #: the Kubernetes pod's UID (with dashes), and its QoS class: ``Guaranteed``,
    #: ``Burstable``, ``BestEffort``
    pod_uid: str | None = None
    qos_class: str | None = None
    #: the innermost systemd unit (``nginx.service``, ``session-3.scope``) and slice
    systemd_unit: str | None = None
    systemd_slice: str | None = None
    #: the cgroup path all this was read from (the cgroup v2 one when there is one)
    path: str | None = None

    @property
    def in_container(self) -> bool:
        return self.container_id is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "container_id": self.container_id,
            "pod_uid": self.pod_uid,
            "qos_class": self.qos_class,
            "systemd_unit": self.systemd_unit,
            "systemd_slice": self.systemd_slice,
            "path": self.path,
        }


def _pod_uid(raw: str) -> str | None:
    """A pod UID as Kubernetes writes it: a UUID with dashes, or (static pods) 32 hex."""
    uid = raw.replace("_", "-")
    digits = uid.replace("-", "")
    if len(digits) != 32:
        return None
    if len(uid) == 36 and [len(part) for part in uid.split("-")] == [8, 4, 4, 4, 12]:
        return uid
    return digits if uid == digits else None


def identify_path(path: str) -> CgroupIdentity:
    """The identity one cgroup path tells (see the module notes for the shapes)."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    runtime = container = pod = qos = unit = slice_ = None
    for i, part in enumerate(parts):
        if len(part) > _MAX_NAME:
            continue
        m = _SCOPES.match(part)
        if m is not None:
            runtime, container = _SCOPE_RUNTIME[m.group(1)], m.group(2)
        else:
            m = _BARE_ID.match(part)
            if m is not None:
                parent = parts[i - 1] if i else ""
                in_pod = pod is not None
                if in_pod or parent in _PARENT_RUNTIME:
                    runtime = None if in_pod else _PARENT_RUNTIME[parent]
                    container = m.group(1)
            else:
                m = _LXC_PAYLOAD.match(part)
                if m is not None or (i == 1 and parts[0] == "lxc"):
                    runtime, container = "lxc", m.group(1) if m is not None else part
        m = _POD_SLICE.match(part)
        if m is not None:
            uid = _pod_uid(m.group(2))
            if uid is not None:
                pod, qos = uid, _QOS[m.group(1)]
        elif "kubepods" in parts[:i]:
            m = _POD_DIR.match(part)
            if m is not None and (uid := _pod_uid(m.group(1))) is not None:
                level = parts[i - 1]
                pod = uid
                qos = _QOS.get(level if level in ("burstable", "besteffort") else None)
        if part.endswith(_UNIT_SUFFIXES):
            unit = part
        elif part.endswith(".slice"):
            slice_ = part
    return CgroupIdentity(runtime, container, pod, qos, unit, slice_, path)


def identify(paths: Iterable[str]) -> CgroupIdentity:
    """The identity a process's cgroup paths tell (``ProcStatic.cgroups``, in file order).

    With cgroup v1 every controller has a line and they may differ (a controller the
    runtime doesn't manage stays at ``/``): the first path that names a container wins,
    then the first that names a systemd unit or slice; the cgroup v2 path (``0::``, the
    last line on a hybrid host) is preferred among equals, as it is the one a process is
    really accounted in.
    """
    fallback: CgroupIdentity | None = None
    for path in reversed(list(paths)):  # the unified (v2) line comes last in the file
        found = identify_path(path)
        if found.in_container:
            return found
        if fallback is None or (not _names_a_unit(fallback) and _names_a_unit(found)):
            fallback = found
    return fallback if fallback is not None else CgroupIdentity()


def _names_a_unit(found: CgroupIdentity) -> bool:
    return found.systemd_unit is not None or found.systemd_slice is not None
