"""The event vocabulary: each type's fields as the protocol documents them, and the
registry the protocol, the hub and the event log take the types from."""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest

from procstream import schema
from procstream.schema import EVENT_ONLY_FIELDS, EVENTS, GROUP_FIELDS, PROC_FIELDS

# The fields as the client reference states them: written out here, once, so a change to
# the vocabulary is a deliberate change to the contract.
IDENTITY = {"pid", "ppid", "start_time", "name", "cmdline", "cmdline_known", "group", "user", "uid"}
GROUP = {
    "group", "procs", "threads", "cpu_s", "cpu_user_s", "cpu_system_s", "cpu_pct",
    "read_bytes", "write_bytes", "read_bps", "write_bps", "mem_resident", "mem_virtual",
    "mem_swap", "open_fds", "worst_fd_ratio", "major_faults", "minor_faults",
    "ctx_voluntary", "ctx_nonvoluntary", "oldest_start_time", "states",
    "expected_min", "expected_max",
}  # fmt: skip
NUMBERED = {"seq", "host"}
CONTRACT: dict[type, tuple[set[str], set[str]]] = {  # (required, optional)
    schema.ProcStart: (IDENTITY | {"type", "ts", "source", "restart_of"}, NUMBERED | {"previous"}),
    schema.ProcExit: (
        IDENTITY | {"type", "ts", "source", "lifetime_s", "cpu_s", "read_bytes", "write_bytes", "exit_code", "signal",
                    "exit_class", "oom_killed"},
        NUMBERED | {"core_dumped"},
    ),
    schema.GroupUpdate: (GROUP | {"type", "ts"}, NUMBERED),
    schema.GroupRemoved: ({"type", "ts", "group", "removed"}, NUMBERED),
    schema.GroupMissing: ({"type", "ts", "group", "expected_min", "procs"}, NUMBERED),
    schema.GroupRecovered: ({"type", "ts", "group", "expected_min", "procs"}, NUMBERED),
    schema.GroupCrashloop: ({"type", "ts", "group", "restarts", "window_s"}, NUMBERED),
    schema.GroupStable: ({"type", "ts", "group", "restarts", "window_s"}, NUMBERED),
    schema.Cycle: (
        {"type", "ts", "duration_ms", "procs_seen", "tracked", "started", "exited",
         "permission_errors", "read_errors", "partial_errors"},
        NUMBERED | {"skipped", "source", "lost_events"},
    ),
    # written by the NATS publisher in place of events it could no longer send: no seq
    # until a fleet aggregator numbers it (and says why, for a message it could not use)
    schema.HostLost: ({"type", "ts", "host", "epoch", "from_seq", "to_seq", "count"}, {"seq", "reason"}),
    # decided by a fleet aggregator and published into the stream: numbered there
    schema.HostUp: ({"type", "ts", "host", "epoch", "last_seen"}, {"seq"}),
    schema.HostDown: ({"type", "ts", "host", "epoch", "last_seen"}, {"seq"}),
}  # fmt: skip


@pytest.mark.parametrize("cls", list(CONTRACT), ids=lambda c: c.__name__)
def test_each_event_has_the_documented_fields(cls: type) -> None:
    required, optional = CONTRACT[cls]
    assert (set(cls.__required_keys__), set(cls.__optional_keys__)) == (required, optional)


def test_identity_and_group_fields() -> None:
    assert set(PROC_FIELDS) == IDENTITY and len(PROC_FIELDS) == len(IDENTITY)
    assert set(GROUP_FIELDS) == GROUP and len(GROUP_FIELDS) == len(GROUP)
    assert set(get_type_hints(schema.StateCounts)) == {"running", "sleeping", "waiting", "zombie", "other"}
    assert set(get_type_hints(schema.RestartOf)) == {"pid", "exit_code", "signal", "down_s"}
    assert schema.EXIT_CLASSES == ("ok", "error", "signal", "oom_kill")


def test_a_snapshots_group_may_have_its_lifecycle() -> None:
    assert set(schema.GroupLifecycle.__optional_keys__) == {"missing", "crashloop", "restarts", "last_exit"}
    assert set(get_type_hints(schema.LastExit)) == {
        "pid", "ts", "exit_class", "exit_code", "signal", "oom_killed"
    }  # fmt: skip
    assert set(schema.GroupLifecycle.__annotations__).isdisjoint(GROUP)


def test_the_registry_lists_every_shape_under_its_own_type() -> None:
    assert schema.EVENT_TYPES == (
        "proc.start", "proc.exit", "group.update",
        "group.missing", "group.recovered", "group.crashloop", "group.stable",
        "cycle", "host.lost", "host.up", "host.down",
    )  # fmt: skip
    shapes = [cls for classes in EVENTS.values() for cls in classes]
    assert sorted(c.__name__ for c in shapes) == sorted(c.__name__ for c in get_args(schema.Event))
    assert set(shapes) == set(CONTRACT)
    for name, classes in EVENTS.items():
        for cls in classes:
            assert get_args(get_type_hints(cls)["type"]) == (name,), cls.__name__


def test_a_snapshots_state_is_what_remains_of_an_event_without_its_own_fields() -> None:
    assert EVENT_ONLY_FIELDS.isdisjoint(IDENTITY) and EVENT_ONLY_FIELDS.isdisjoint(GROUP)
    assert set(schema.ProcStart.__annotations__) - EVENT_ONLY_FIELDS == IDENTITY
    assert set(schema.GroupUpdate.__annotations__) - EVENT_ONLY_FIELDS == GROUP
    assert set(schema.GroupRemoved.__annotations__) - EVENT_ONLY_FIELDS == {"group"}
