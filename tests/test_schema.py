"""The event vocabulary: each type's fields as the protocol documents them, and the
registry the protocol, the hub and the event log take the types from."""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest

from procstream import schema
from procstream.schema import EVENT_ONLY_FIELDS, EVENTS, GROUP_FIELDS, PROC_FIELDS

# The fields as the client reference states them: written out here, once, so a change to
# the vocabulary is a deliberate change to the contract.
IDENTITY = {"pid", "ppid", "start_time", "name", "cmdline", "cmdline_known", "cmdline_truncated", "group", "user", "uid"}
GROUP = {
    "group", "procs", "threads", "cpu_s", "cpu_user_s", "cpu_system_s", "cpu_pct",
    "read_bytes", "write_bytes", "read_bps", "write_bps", "mem_resident", "mem_virtual",
    "mem_swap", "open_fds", "worst_fd_ratio", "major_faults", "minor_faults",
    "ctx_voluntary", "ctx_nonvoluntary", "oldest_start_time", "states",
    "expected_min", "expected_max",
}  # fmt: skip
LIVE = {
    "cpu_pct", "cpu_s", "mem_resident", "mem_virtual", "mem_swap", "threads", "open_fds",
    "fd_ratio", "state", "read_bps", "write_bps",
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
         "permission_errors", "read_errors", "partial_errors", "reads_skipped"},
        NUMBERED | {"skipped", "interval_s", "source", "lost_events"},
    ),
    # written by the NATS publisher in place of events it could no longer send: no seq
    # until a fleet aggregator numbers it (and says why, for a message it could not use)
    schema.HostLost: ({"type", "ts", "host", "epoch", "from_seq", "to_seq", "count"}, {"seq", "reason"}),
    schema.ProcUpdate: (LIVE | {"type", "ts", "pid", "start_time", "group"}, {"host"}),  # no seq
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
    assert set(schema.LIVE_FIELDS) == LIVE and len(schema.LIVE_FIELDS) == len(LIVE)


def test_proc_update_is_sent_only_to_who_names_it() -> None:
    assert schema.EXPLICIT_TYPES == {"proc.update"}
    assert schema.DEFAULT_TYPES == (
        "proc.start", "proc.exit", "group.update",
        "group.missing", "group.recovered", "group.crashloop", "group.stable",
        "cycle", "host.lost", "host.up", "host.down",
    )  # fmt: skip


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
        "cycle", "host.lost", "proc.update", "host.up", "host.down",
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


# -- bounded sizes ------------------------------------------------------------------------


def test_cut_text_cuts_utf8_bytes_on_a_character_boundary() -> None:
    assert schema.cut_text("short") == "short"
    assert schema.cut_text("é" * 600) == "é" * 512  # 2 bytes each
    assert len(schema.cut_text("€" * 1000).encode()) <= schema.STRING_MAX_BYTES  # 3 bytes each
    assert schema.cut_text("a" * 5000, 10) == "a" * 10
    assert schema.cut_text("\ud800" * 400, 30) == "?" * 30


def test_cap_cmdline_by_count_and_bytes() -> None:
    assert schema.cap_cmdline(("ls", "-l")) == (["ls", "-l"], False)
    many = [str(i) for i in range(1000)]
    assert schema.cap_cmdline(many) == (many[: schema.CMDLINE_MAX_ARGS], True)
    args, cut = schema.cap_cmdline(["java", "-cp", "x" * 100_000, "Main"])
    assert cut and args[:2] == ["java", "-cp"]
    assert sum(len(a.encode()) for a in args) == schema.CMDLINE_MAX_BYTES
    exact = ["y" * schema.CMDLINE_MAX_BYTES]
    assert schema.cap_cmdline(exact) == (exact, False)
    args, cut = schema.cap_cmdline(["é" * schema.CMDLINE_MAX_BYTES])
    assert cut and len(args[0].encode()) <= schema.CMDLINE_MAX_BYTES


def test_the_procfs_read_limit_is_what_events_keep() -> None:
    from procstream.procfs.cmdline import READ_LIMIT

    assert READ_LIMIT == schema.CMDLINE_MAX_BYTES
