"""process-exporter's YAML config: selecting and naming processes, and refusing bad files."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from procstream.config import (
    DEFAULT_CONFIG_TEXT,
    Config,
    ConfigError,
    MatchNamer,
    ProcAttributes,
    Rule,
    default_config,
    load_config,
    parse_config,
)
from procstream.users import UserNames
from tests.support.waiting import wait_for


def attrs(
    name: str,
    *cmdline: str,
    pid: int = 100,
    start_time: float = 0.0,
    username: str = "",
    cgroups: tuple[str, ...] = (),
) -> ProcAttributes:
    return ProcAttributes(name, tuple(cmdline), cgroups, username, pid, start_time)


NO = (False, "")

# -- process-exporter's README and packaging ------------------------------------------------


def test_packaged_default() -> None:
    config = default_config()
    assert isinstance(config, Config)
    assert config.match_and_name(attrs("bash", "/bin/bash", "-l")) == (True, "bash")
    # grouped by comm, not by argv[0]
    assert config.match_and_name(attrs("kworker-ish", "/usr/bin/something")) == (True, "kworker-ish")
    # no cmdline (kernel threads, zombies): not watched
    assert config.match_and_name(attrs("kthreadd")) == NO
    # one empty argument still joins to "": `.+` does not match it
    assert config.match_and_name(attrs("odd", "")) == NO
    assert config.match_and_name(attrs("odd", "", "")) == (True, "odd")  # " " matches .+
    assert parse_config(DEFAULT_CONFIG_TEXT).match_and_name(attrs("x", "y")) == (True, "x")


def test_cmdline_regexes_see_an_empty_string_without_cmdline_like_go() -> None:
    # process-exporter runs the regexes on "" for kernel threads: `^$` selects them
    config = parse_config("process_names:\n  - name: 'kernel:{{.Comm}}'\n    cmdline: ['^$']\n")
    assert config.match_and_name(attrs("kthreadd")) == (True, "kernel:kthreadd")
    assert config.match_and_name(attrs("bash", "/bin/bash")) == NO
    # exe still needs an argv[0]
    assert parse_config("process_names:\n  - exe: [kthreadd]\n").match_and_name(attrs("kthreadd")) == NO


README_SELECTORS = r"""
process_names:
  # comm is the second field of /proc/<pid>/stat minus parens.
  # It is the base executable name, truncated at 15 chars.
  # It cannot be modified by the program, unlike exe.
  - comm:
    - bash

  # exe is argv[0]. If no slashes, only basename of argv[0] need match.
  # If exe contains slashes, argv[0] must match exactly.
  - exe:
    - postgres
    - /usr/local/bin/prometheus

  # cmdline is a list of regexps applied to argv.
  # Each must match, and any captures are added to the .Matches map.
  - name: "{{.ExeFull}}:{{.Matches.Cfgfile}}"
    exe:
    - /usr/local/bin/process-exporter
    cmdline:
    - -config.path\s+(?P<Cfgfile>\S+)
"""


def test_readme_selector_example() -> None:
    config = parse_config(README_SELECTORS, "readme.yaml")
    assert len(config.rules) == 3
    # comm, named by the default {{.ExeBase}}
    assert config.match_and_name(attrs("bash", "/bin/bash")) == (True, "bash")
    assert config.match_and_name(attrs("bash", "-bash")) == (True, "-bash")  # a login shell
    assert config.match_and_name(attrs("sh", "/bin/sh")) == NO
    # exe without "/": basename of argv[0]
    assert config.match_and_name(attrs("postgres", "/usr/lib/postgresql/15/bin/postgres", "-D", "x")) == (
        True,
        "postgres",
    )
    assert config.match_and_name(attrs("postgres", "postgres: checkpointer")) == NO
    # exe with "/": argv[0] exactly
    assert config.match_and_name(attrs("prometheus", "/usr/local/bin/prometheus")) == (True, "prometheus")
    assert config.match_and_name(attrs("prometheus", "/opt/bin/prometheus")) == NO
    assert config.match_and_name(attrs("prometheus", "prometheus")) == NO
    # exe and cmdline, with a named capture
    pe = ("/usr/local/bin/process-exporter", "-config.path", "/etc/pe/all.yaml")
    assert config.match_and_name(attrs("process-exporte", *pe)) == (
        True,
        "/usr/local/bin/process-exporter:/etc/pe/all.yaml",
    )
    assert config.match_and_name(attrs("process-exporte", pe[0], "-procnames", "x")) == NO
    assert config.match_and_name(attrs("process-exporte", "process-exporter", *pe[1:])) == NO


README_HOME = """
process_names:
  - comm:
    - chromium-browse
    - bash
    - prometheus
    - gvim
  - exe:
    - /sbin/upstart
    cmdline:
    - --user
    name: upstart:-user
"""


def test_readme_home_machine_example() -> None:
    config = parse_config(README_HOME, "home.yaml")
    chromium = "/usr/lib/chromium-browser/chromium-browser"
    assert config.match_and_name(attrs("chromium-browse", chromium, "--type=renderer")) == (True, "chromium-browser")
    assert config.match_and_name(attrs("gvim", "gvim", "notes.txt")) == (True, "gvim")
    assert config.match_and_name(attrs("prometheus", "./prometheus")) == (True, "prometheus")
    assert config.match_and_name(attrs("upstart", "/sbin/upstart", "--user")) == (True, "upstart:-user")
    assert config.match_and_name(attrs("init", "/sbin/upstart")) == NO
    assert config.match_and_name(attrs("upstart", "upstart", "--user")) == NO
    assert config.match_and_name(attrs("vim", "vim")) == NO


# -- process-exporter's config_test.go, re-expressed ------------------------------------------


def test_go_config_basic() -> None:
    config = parse_config(
        """
process_names:
  - exe:
    - bash
  - exe:
    - sh
  - exe:
    - /bin/ksh
"""
    )
    bash = attrs("bash", "/bin/bash")
    sh = attrs("sh", "sh")
    ksh = attrs("ksh", "/bin/ksh")
    table = [[r.match_and_name(p) for p in (bash, sh, ksh)] for r in config.rules]
    assert table == [
        [(True, "bash"), NO, NO],
        [NO, (True, "sh"), NO],
        [NO, NO, (True, "ksh")],
    ]


def test_go_config_templates() -> None:
    config = parse_config(
        r"""
process_names:
  - exe:
    - postmaster
    cmdline:
    - "-D\\s+.+?(?P<Path>[^/]+)(?:$|\\s)"
    name: "{{.ExeBase}}:{{.Matches.Path}}"
  - exe:
    - prometheus
    name: "{{.ExeFull}}:{{.PID}}"
  - comm:
    - cat
    name: "{{.StartTime}}"
"""
    )
    postmaster, prometheus, cat = config.rules
    assert postmaster.match_and_name(attrs("postmaster", "/usr/bin/postmaster", "-D", "/data/pg")) == (
        True,
        "postmaster:pg",
    )
    assert prometheus.match_and_name(attrs("prometheus", "/usr/local/bin/prometheus", pid=23)) == (
        True,
        "/usr/local/bin/prometheus:23",
    )
    started = datetime(2026, 11, 26, 7, 14, 26, 120000, tzinfo=timezone.utc).timestamp()
    assert cat.match_and_name(attrs("cat", "/bin/cat", start_time=started)) == (
        True,
        "2026-11-26 07:14:26.12 +0000 UTC",
    )
    assert config.match_and_name(attrs("cat", "/bin/cat", start_time=started + 0.88)) == (
        True,
        "2026-11-26 07:14:27 +0000 UTC",
    )


# -- selectors ------------------------------------------------------------------------------


def test_first_rule_wins() -> None:
    config = parse_config(
        """
process_names:
  - name: first
    comm: [bash]
  - name: second
    comm: [bash, sh]
  - name: "catch-all {{.Comm}}"
    cmdline: ['.']
"""
    )
    assert config.match_and_name(attrs("bash", "bash")) == (True, "first")
    assert config.match_and_name(attrs("sh", "sh")) == (True, "second")
    assert config.match_and_name(attrs("zsh", "zsh")) == (True, "catch-all zsh")
    assert config.match_and_name(attrs("zsh")) == NO


def test_all_selectors_must_match() -> None:
    config = parse_config(
        """
process_names:
  - name: all
    comm: [python3]
    exe: [python3, /usr/bin/python3.11]
    cmdline: ['-m\\s+http\\.server']
"""
    )
    serve = ("-m", "http.server", "8000")
    assert config.match_and_name(attrs("python3", "python3", *serve)) == (True, "all")
    assert config.match_and_name(attrs("python3", "/usr/bin/python3.11", *serve)) == (True, "all")
    assert config.match_and_name(attrs("python3.11", "python3", *serve)) == NO  # comm fails
    assert config.match_and_name(attrs("python3", "/usr/local/bin/python3.11", *serve)) == NO  # exe fails
    assert config.match_and_name(attrs("python3", "python3", "-m", "pytest")) == NO  # cmdline fails


def test_cmdline_regexes_are_anded_and_unanchored() -> None:
    config = parse_config(
        r"""
process_names:
  - name: "{{.Matches.Port}}/{{.Matches.Dir}}"
    cmdline:
    - 'http\.server'
    - '(?P<Port>\d+)$'
    - '--directory\s+(?P<Dir>\S+)'
"""
    )
    full = ("python3", "-m", "http.server", "--directory", "/srv", "8000")
    assert config.match_and_name(attrs("python3", *full)) == (True, "8000//srv")
    assert config.match_and_name(attrs("python3", *full[:3], "8000")) == NO
    assert config.match_and_name(attrs("python3", *full[:-1])) == NO


def test_cmdline_is_searched_in_argv_joined_by_spaces() -> None:
    config = parse_config("process_names:\n  - {name: hit, cmdline: ['a b c']}\n")
    assert config.match_and_name(attrs("x", "a", "b c")) == (True, "hit")
    assert config.match_and_name(attrs("x", "a", "bc")) == NO


def test_exe_entries_are_any_of() -> None:
    # Go keys its exe map by basename, so of two entries with one basename only the
    # last is honoured; we honour each entry, as the README documents.
    config = parse_config("process_names:\n  - exe: [/usr/bin/foo, /opt/foo, bar]\n")
    assert config.match_and_name(attrs("foo", "/usr/bin/foo")) == (True, "foo")
    assert config.match_and_name(attrs("foo", "/opt/foo")) == (True, "foo")
    assert config.match_and_name(attrs("foo", "/usr/local/bin/foo")) == NO
    assert config.match_and_name(attrs("foo", "foo")) == NO
    assert config.match_and_name(attrs("bar", "/any/where/bar", "-x")) == (True, "bar")
    assert config.match_and_name(attrs("bar", "bar/")) == (True, "bar")  # Go's filepath.Base


def test_no_cmdline_never_matches_exe_and_only_empty_matching_regexes() -> None:
    config = parse_config(
        """
process_names:
  - name: by-exe
    exe: [kthreadd]
  - name: by-cmdline
    cmdline: ['.+']
  - name: "{{.ExeBase}}|{{.ExeFull}}|{{.Comm}}"
    comm: [kthreadd]
"""
    )
    assert config.match_and_name(attrs("kthreadd")) == (True, "kthreadd|kthreadd|kthreadd")
    assert config.match_and_name(attrs("kthreadd", "/sbin/kthreadd")) == (True, "by-exe")
    assert config.match_and_name(attrs("other", "x")) == (True, "by-cmdline")


# -- name templates -------------------------------------------------------------------------


def test_every_template_field() -> None:
    config = parse_config(
        r"""
process_names:
  - comm: [nginx]
    cmdline: ['-c\s+(?P<Conf>\S+)', '(\S+)$']
    name: >-
      {{.Comm}}|{{.ExeBase}}|{{.ExeFull}}|{{.Username}}|{{.PID}}|{{.StartTime}}|{{.Cgroups}}|{{.Matches.Conf}}|{{.Matches.Nope}}|{{.Matches}}
"""
    )
    p = attrs(
        "nginx",
        "/usr/sbin/nginx",
        "-c",
        "/etc/nginx.conf",
        "-g",
        "daemon",
        pid=4242,
        start_time=datetime(2026, 1, 2, 3, 4, 5, 60000, tzinfo=timezone.utc).timestamp(),
        username="www-data",
        cgroups=("/", "/system.slice/nginx.service"),
    )
    assert config.match_and_name(p) == (
        True,
        "nginx|nginx|/usr/sbin/nginx|www-data|4242|2026-01-02 03:04:05.06 +0000 UTC"
        "|[/ /system.slice/nginx.service]|/etc/nginx.conf|<no value>"
        # Go keeps every group: "" holds the last unnamed one (here the whole 2nd match)
        "|map[:daemon Conf:/etc/nginx.conf]",
    )
    assert config.needs_cgroups and config.needs_username


def test_matches_like_go_across_regexes() -> None:
    config = parse_config(
        r"""
process_names:
  - cmdline: ['(?P<A>\d+) (\d+)', '(?P<B>z+)?(?P<A>[a-c]+)']
    name: "{{.Matches}}"
"""
    )
    # later regexes overwrite: A from the second; unmatched optional B is ""; "" is the
    # last unnamed value, i.e. the second regex's whole match
    assert config.match_and_name(attrs("x", "12", "34", "abc")) == (True, "map[:abc A:abc B:]")


def test_matches_without_cmdline_selector() -> None:
    config = parse_config("process_names:\n  - {comm: [x], name: '{{.Matches}}/{{.Matches.K}}'}\n")
    assert config.match_and_name(attrs("x", "x")) == (True, "map[]/<no value>")


def test_default_name_and_empty_name() -> None:
    config = parse_config("process_names:\n  - {comm: [a]}\n  - {comm: [b], name: ''}\n  - {comm: [c], name: ~}\n")
    assert [r.name for r in config.rules] == ["{{.ExeBase}}"] * 3
    assert config.match_and_name(attrs("b", "/usr/bin/b-real")) == (True, "b-real")


def test_plain_scalars_are_text_as_in_go_yaml() -> None:
    # Go's yaml.v2 fills a string field from the scalar's text: no ints, floats or bools
    config = parse_config("process_names:\n  - {comm: [123, yes, 1.50, 0x1F], name: 1_000}\n")
    assert config.rules[0].comm == {"123", "yes", "1.50", "0x1F"}
    assert config.match_and_name(attrs("1.50", "x")) == (True, "1_000")
    assert config.match_and_name(attrs("yes", "x")) == (True, "1_000")
    assert config.match_and_name(attrs("True", "x")) == NO


def test_literal_trim_and_comment_in_names() -> None:
    config = parse_config("process_names:\n  - comm: [a]\n    name: 'svc: {{- /* why */ -}}  {{.Comm -}}   !'\n")
    assert config.match_and_name(attrs("a", "a")) == (True, "svc:a!")


def test_needs_flags_follow_the_templates() -> None:
    assert not default_config().needs_cgroups and not default_config().needs_username
    user = parse_config("process_names:\n  - {comm: [a], name: '{{.Username}}'}\n")
    assert user.needs_username and not user.needs_cgroups
    cg = parse_config("process_names:\n  - {comm: [a]}\n  - {comm: [b], name: '{{.Cgroups}}'}\n")
    assert cg.needs_cgroups and not cg.needs_username


def test_introspection_and_repr() -> None:
    config = parse_config(README_SELECTORS, "readme.yaml")
    rule = config.rules[2]
    assert isinstance(rule, Rule)
    assert rule.index == 2
    assert rule.exe == ("/usr/local/bin/process-exporter",)
    assert rule.cmdline == (r"-config.path\s+(?P<Cfgfile>\S+)",)
    assert rule.comm is None
    assert rule.fields == {"ExeFull", "Matches"}
    assert config.rules[0].comm == {"bash"}
    assert rule.matches(attrs("p", "/usr/local/bin/process-exporter", "-config.path", "x"))
    text = repr(config)
    assert text.startswith("Config(source='readme.yaml', rules=[Rule(process_names[0], ")
    assert "exe=['/usr/local/bin/process-exporter']" in text and "comm=['bash']" in text


def test_config_is_a_match_namer() -> None:
    def name_with(namer: MatchNamer) -> tuple[bool, str]:
        return namer.match_and_name(attrs("bash", "bash"))

    assert name_with(default_config()) == (True, "bash")


def test_proc_attributes_is_a_frozen_value() -> None:
    p = attrs("a", "b")
    assert p.uid == -1
    assert p == attrs("a", "b") and hash(p) == hash(attrs("a", "b"))
    with pytest.raises(AttributeError):
        p.name = "x"  # type: ignore[misc]


# -- errors ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: ") :]


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, README_HOME)
    config = load_config(path)
    assert config.source == str(path)
    assert config.match_and_name(attrs("gvim", "gvim")) == (True, "gvim")
    assert load_config(str(path)).source == str(path)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(missing))}: cannot read config file: No such file"):
        load_config(missing)
    with pytest.raises(ConfigError, match="cannot read config file: Is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"process_names: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "process_names:\n  - comm: [bash\n  - exe: [x]\n")
    assert re.match(r"line 3, column \d+: YAML error: ", message), message
    message = load_error(tmp_path, "process_names:\n  - comm: [a]\n\tname: x\n")
    assert message.startswith("line 3, column 1: YAML error: "), message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty config; expected a mapping with process_names"),
        ("# only a comment\n", "empty config; expected a mapping with process_names"),
        ("- comm: [a]\n", "the top level must be a mapping with process_names, got list"),
        ("just text\n", "the top level must be a mapping with process_names, got str"),
        ("{}\n", "no process_names"),
        ("process_names:\n", "process_names must be a list of rules, got nothing"),
        ("process_names: {comm: [a]}\n", "process_names must be a list of rules, got dict {'comm': ['a']}"),
        ("process_names: []\n", "process_names is empty; no process would be watched"),
        (
            "process_name:\n  - comm: [a]\n",
            "unknown top-level key 'process_name' (did you mean process_names?)",
        ),
        (
            "process_names:\n  - comm: [a]\nchildren: true\n",
            "unknown top-level key 'children' (expected process_names, expected_groups, lifecycle)",
        ),
        ("process_names:\n  - bash\n", "process_names[0] must be a mapping with name/comm/exe/cmdline, got str 'bash'"),
    ],
)
def test_top_level_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert load_error(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # unknown keys (process-exporter ignores them; a typo must not pass)
        ("{comm: [a], cmdlin: [x]}", "process_names[1] (comm 'a'): unknown key 'cmdlin' (did you mean cmdline?)"),
        ("{name: x, comm: [a], user: root}", 'process_names[1] (name "x"): unknown key \'user\' (expected name, comm, exe, cmdline)'),
        # no selector
        ("{name: lonely}", 'process_names[1] (name "lonely"): no selector: give at least one of comm, exe, cmdline'),
        # selector values
        ("{comm: bash}", "process_names[1]: comm must be a list of strings, got str 'bash'"),
        ("{exe: {a: b}}", "process_names[1]: exe must be a list of strings, got dict {'a': 'b'}"),
        ("{comm: [a, {b: c}]}", "process_names[1] (comm 'a', ...): comm[1] must be a string, got dict {'b': 'c'}"),
        ("{cmdline: [[a]]}", "process_names[1] (cmdline ['a']): cmdline[0] must be a string, got list ['a']"),
        ("{comm: [a, !!int 7]}", "process_names[1] (comm 'a', ...): comm[1] must be a string, got int 7"),
        ("{comm: [a, ~]}", "process_names[1] (comm 'a', ...): comm[1] must be a string, got NoneType None"),
        ("{comm: []}", "process_names[1]: comm is an empty list; a selector needs at least one entry"),
        ("{comm: [a], exe: }", "process_names[1] (comm 'a'): exe has no value; give a list, e.g. exe: [...]"),
        ("{comm: [a], name: [x]}", "process_names[1] (comm 'a'): name must be a string, got list ['x']"),
        # bad regexes: Go would refuse, or Python can't match the Go way
        (
            "{name: r, cmdline: [ok, '(unclosed']}",
            "process_names[1] (name \"r\"): cmdline[1] '(unclosed': bad regex: missing closing ) at offset 9",
        ),
        (
            "{name: r, cmdline: ['\\pL+']}",
            "process_names[1] (name \"r\"): cmdline[0] '\\\\pL+': bad regex: Unicode class \\pL is not supported",
        ),
        ("{name: r, cmdline: ['(?=x)']}", 'process_names[1] (name "r"): cmdline[0] \'(?=x)\': bad regex: invalid or unsupported Perl syntax'),
        # bad templates
        ("{name: '{{.Foo}}', comm: [a]}", 'process_names[1] (name "{{.Foo}}"): unknown template field .Foo'),
        ("{name: '{{.comm}}', comm: [a]}", 'process_names[1] (name "{{.comm}}"): unknown template field .comm (did you mean .Comm?)'),
        ("{name: '{{.Comm.X}}', comm: [a]}", 'process_names[1] (name "{{.Comm.X}}"): unknown template field .Comm.X'),
        ("{name: '{{.Matches.A.B}}', comm: [a]}", 'process_names[1] (name "{{.Matches.A.B}}"): unknown template field .Matches.A.B'),
        (
            "{name: '{{.Comm | printf \"%q\"}}', comm: [a]}",
            'process_names[1] (name "{{.Comm | printf "%q"}}"): unsupported template action {{.Comm | printf "%q"}}',
        ),
        ("{name: '{{if .PID}}x{{end}}', comm: [a]}", 'process_names[1] (name "{{if .PID}}x{{end}}"): unsupported template action {{if .PID}}'),
        ("{name: 'x{{.Comm', comm: [a]}", "process_names[1] (name \"x{{.Comm\"): unclosed action '{{.Comm'"),
        # duplicate keys would silently replace each other in plain YAML loading
        ("{comm: [a], comm: [b]}", None),
    ],
)
def test_rule_errors(tmp_path: Path, rule: str, expected: str | None) -> None:
    message = load_error(tmp_path, f"process_names:\n  - comm: [fine]\n  - {rule}\n")
    if expected is None:
        assert re.match(r"line 3, column \d+: YAML error: duplicate key 'comm'", message), message
    else:
        assert message.startswith(expected), message


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^<string>: no process_names$"):
        parse_config("{}")
    with pytest.raises(ConfigError, match=r"^inline: process_names\[0\]: no selector"):
        parse_config("process_names: [{}]", "inline")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# -- parity with the real process-exporter ----------------------------------------------------

EXPORTER = "/usr/bin/prometheus-process-exporter"
# comm is at most 15 bytes: keep names short and unique per run. Hex digits keep "0x{TAG}" an
# int to YAML 1.1; no "a" or "b", because the regex rules below (a.b, abc$) must not match the
# executable's path, which contains the TAG.
TAG = "".join(random.choice("0123456789cdef") for _ in range(6))


def _comm(key: str) -> str:
    return f"{key}{TAG}"


# Each spawned process: (comm / executable name, argv[0], further args after "-- -").
# They are copies of cat reading a pipe nobody writes, so their argv can be anything.
PROCS: list[tuple[str, str, tuple[str, ...]]] = [
    (_comm("pa"), "", ("one",)),
    (_comm("pa"), "", ("two",)),
    (_comm("pb"), f"/opt/fake/pbalias{TAG}", ()),
    (_comm("pc"), "", ("--cfg", f"/etc/x{TAG}.yml", "12", "34")),
    (_comm("pd"), "", ()),
    (_comm("pe"), "", ()),
    (_comm("pf"), "", ()),
    (_comm("pg"), f"relative/dir/pg{TAG}/", ()),
    (f"0x{TAG}", "", ()),  # YAML 1.1 would read 0x... as an int; Go's yaml.v2 keeps the text
    # regexp semantics that differ between Go and a naive Python re
    (_comm("ra"), "", ("abc\n",)),  # $ and a trailing newline
    (_comm("rb"), "", ("\u0663",)),  # \d is ASCII
    (_comm("rc"), "", ("h\u00e9llo",)),  # \w is ASCII
    (_comm("rd"), "", ("xx{,2}",)),  # {,2} is a literal
    (_comm("re"), "", ("a\vb",)),  # \s has no \v
    (_comm("rf"), "", ("\u00e9x",)),  # \b is ASCII
    (_comm("rg"), "", ("QRS",)),  # (?i) mid-pattern
    (_comm("rh"), "", ("xABc",)),  # POSIX class
    (_comm("ri"), "", ("a.+b",)),  # \Q...\E
    (_comm("rj"), "", ("a\nb",)),  # . and (?s)
    (_comm("rk"), "", ("q",)),  # optional named group that does not take part
    (_comm("rl"), "", ("\u00e9",)),  # (?i) with a non-ASCII letter
]

PARITY_CONFIG = f"""
process_names:
  - comm: [{_comm("pa")}]
    name: "c:{{{{.Comm}}}}:{{{{.ExeBase}}}}"
  - exe: [/opt/fake/pbalias{TAG}]
    name: "e:{{{{.ExeFull}}}}|{{{{.ExeBase}}}}|{{{{.Username}}}}"
  - exe: [{_comm("pc")}]
    cmdline: ['--cfg\\s+(?P<Cfg>\\S+)', '(?P<A>\\d+) (\\d+)$']
    name: "m:{{{{.Matches.Cfg}}}}|{{{{.Matches}}}}|{{{{.Matches.Nope}}}}"
  - comm: [{_comm("pd")}]
    name: "t:{{{{.PID}}}}:{{{{.StartTime}}}}:{{{{.Cgroups}}}}"
  - comm: [{_comm("pe")}]
    name: "first:{TAG}"
  - comm: [{_comm("pe")}]
    name: "second:{TAG}"
  - comm: [{_comm("pf")}]
    cmdline: ['nomatch{TAG}']
    name: "and-fails:{TAG}"
  - exe: [{_comm("pf")}]
    name: "and:{{{{.ExeBase}}}}  {{{{- /* trimmed */ -}}}}  !"
  - comm: [{_comm("pg")}]
  - comm: [0x{TAG}]
    name: 1_000
  - {{comm: [{_comm("ra")}], cmdline: ['abc$'], name: "ra:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("rb")}], cmdline: ['- \\d'], name: "rb:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("rc")}], cmdline: ['(?P<W>\\w+)\\z'], name: "rc:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("rd")}], cmdline: ['(?P<M>x{{,2}})\\z'], name: "rd:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("re")}], cmdline: ['a\\sb'], name: "re:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("rf")}], cmdline: ['\\bx'], name: "rf:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("rg")}], cmdline: ['(?P<M>Q(?i)rs)'], name: "rg:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("rh")}], cmdline: ['[[:upper:]]+'], name: "rh:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("ri")}], cmdline: ['\\Q.+\\E'], name: "ri:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("rj")}], cmdline: ['a.b'], name: "rj:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("rk")}], cmdline: ['(?P<A>zz)?(?P<B>q)'], name: "rk:{{{{.Matches}}}}"}}
  - {{comm: [{_comm("rl")}], cmdline: ['(?i)\u00c9'], name: "rl:{{{{.Matches}}}}"}}
  - {{cmdline: ['{TAG}'], name: "nomatch:{{{{.Comm}}}}"}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_attributes(pid: int, usernames: UserNames) -> ProcAttributes:
    """Build what the tracker would hand the config, straight from /proc."""
    base = Path(f"/proc/{pid}")
    stat = (base / "stat").read_bytes()
    comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode()
    fields = stat[stat.rindex(b")") + 2 :].split()
    start_ticks = int(fields[19])  # field 22 of stat; fields[0] is field 3
    btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    raw = (base / "cmdline").read_bytes()
    cmdline = tuple(a.decode() for a in raw.split(b"\0")[:-1]) if raw else ()
    cgroups = tuple(line.split(":", 2)[2] for line in (base / "cgroup").read_text().splitlines())
    uid = int(next(line for line in (base / "status").read_text().splitlines() if line.startswith("Uid:")).split()[2])
    return ProcAttributes(
        name=comm,
        cmdline=cmdline,
        cgroups=cgroups,
        username=usernames(uid),
        pid=pid,
        start_time=btime + start_ticks / os.sysconf("SC_CLK_TCK"),
        uid=uid,
    )


def _unescape_label(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def _num_procs(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, int] = {}
    for m in re.finditer(r'^namedprocess_namegroup_num_procs\{groupname="((?:[^"\\]|\\.)*)"\} (\S+)$', text, re.M):
        found[_unescape_label(m.group(1))] = int(float(m.group(2)))
    return found


@pytest.fixture
def spawned(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The PROCS, running until the test ends."""
    cat = shutil.which("cat")
    assert cat is not None
    bindir = tmp_path / "bin"
    bindir.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for comm, argv0, args in PROCS:
            exe = bindir / comm
            if not exe.exists():
                shutil.copy(cat, exe)
            argv = [argv0 or str(exe), "--", "-", *args]
            procs.append(subprocess.Popen(argv, executable=exe, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL))
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)
            if p.stdin is not None:
                p.stdin.close()


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[int]:
    """The real process-exporter with PARITY_CONFIG; yields its port once it answers."""
    config = tmp_path / "parity.yaml"
    config.write_text(PARITY_CONFIG)
    port = _free_port()
    log = (tmp_path / "exporter.log").open("wb")
    proc = subprocess.Popen(
        [EXPORTER, "-config.path", str(config), "-web.listen-address", f"127.0.0.1:{port}", "-threads=false", "-gather-smaps=false"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    def listening() -> bool:
        assert proc.poll() is None, (tmp_path / "exporter.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for("process-exporter to listen", listening, timeout=15, step=0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.mark.skipif(not os.access(EXPORTER, os.X_OK), reason=f"{EXPORTER} is not installed")
def test_parity_with_process_exporter(spawned: list[subprocess.Popen[bytes]], exporter: int) -> None:
    config = parse_config(PARITY_CONFIG, "parity.yaml")
    usernames = UserNames()
    ours: Counter[str] = Counter()
    for proc in spawned:
        wanted, name = config.match_and_name(_read_attributes(proc.pid, usernames))
        assert wanted
        ours[name] += 1

    # Ours first, independently of the exporter, so the comparison can't pass vacuously.
    assert ours[f"c:{_comm('pa')}:{_comm('pa')}"] == 2
    assert ours[f"e:/opt/fake/pbalias{TAG}|pbalias{TAG}|root"] == 1
    assert ours[f"m:/etc/x{TAG}.yml|map[:34 A:12 Cfg:/etc/x{TAG}.yml]|<no value>"] == 1
    assert ours[f"first:{TAG}"] == 1 and ours[f"and:{_comm('pf')}!"] == 1
    assert ours[f"pg{TAG}"] == 1  # default {{.ExeBase}} of "relative/dir/pgTAG/"
    assert ours["1_000"] == 1
    assert ours["rc:map[:llo W:llo]"] == 1 and ours["rd:map[:x{,2} M:x{,2}]"] == 1
    assert ours["rk:map[:q A: B:q]"] == 1 and ours["rf:map[:x]"] == 1
    for key in ("ra", "rb", "re", "rj"):
        assert ours[f"nomatch:{_comm(key)}"] == 1

    def theirs() -> dict[str, int]:
        try:
            return _num_procs(exporter)
        except (urllib.error.URLError, ConnectionError):
            return {}

    wait_for(
        "process-exporter's groups to equal ours",
        lambda: theirs() == dict(ours),
        timeout=15,
        step=0.2,
        explain=lambda: {"theirs": theirs(), "ours": dict(ours)},
    )
