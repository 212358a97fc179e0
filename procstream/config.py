"""process-exporter's YAML config: which processes to watch and what group to put them in.

    config = load_config("procs.yaml")          # or parse_config(text), default_config()
    matched, group = config.match_and_name(attrs)

The file is process-exporter's, unchanged::

    process_names:
      - name: "{{.ExeBase}}:{{.Matches.Cfg}}"   # Go template, default {{.ExeBase}}
        comm: [bash, sh]                         # any of: exact comm
        exe: [postgres, /usr/bin/prometheus]     # any of: basename(argv[0]), or argv[0] if it has "/"
        cmdline: ['-config\\s+(?P<Cfg>\\S+)']      # all of: Go regexps searched in " ".join(argv)

A rule matches when all of its selectors match; the first matching rule names the process.
Unlike process-exporter we refuse, at load time and naming the file and rule, what it
would silently accept or fail on later: unknown keys (typos), selectors that are not
non-empty lists of strings, regexps Python can't match the Go way, template fields that
don't exist, template actions beyond plain fields.

Regexps and templates are compiled once per rule; ``match_and_name`` tries the cheap set
lookups (comm, exe) before any regexp, and builds the ``.Matches`` map only when the rule's
template reads it.

Two more top-level keys are procstream's own; process-exporter ignores unknown top-level
keys, so one file serves both::

    expected_groups:              # a group below its min is reported missing
      - {group: postgres, min: 1}
      - {group: nginx, min: 2, max: 8}
    lifecycle:                    # restarts and crash loops (defaults shown)
      restart_window_s: 10
      crashloop_restarts: 5
      crashloop_window_s: 300
      stable_after_s: 600

They are checked as strictly as the rules: unknown keys, missing or non-numeric values,
``max`` below ``min`` and a group listed twice are errors naming the file and the entry.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any, Protocol

import yaml

from ._go.regex import GoRegex, GoRegexError, compile_go
from ._go.template import (
    NO_VALUE,
    Field,
    TemplateError,
    go_map_string,
    go_slice_string,
    go_time_string,
    parse_template,
)

__all__ = [
    "ProcAttributes",
    "MatchNamer",
    "Config",
    "Rule",
    "ConfigError",
    "ExpectedGroup",
    "LifecycleConfig",
    "load_config",
    "parse_config",
    "default_config",
    "DEFAULT_CONFIG_TEXT",
    "DEFAULT_NAME_TEMPLATE",
]

#: the config process-exporter's deb and rpm packages ship
DEFAULT_CONFIG_TEXT = """\
process_names:
  - name: "{{.Comm}}"
    cmdline:
    - '.+'
"""
DEFAULT_NAME_TEMPLATE = "{{.ExeBase}}"

_SELECTORS = ("comm", "exe", "cmdline")
_RULE_KEYS = ("name", *_SELECTORS)
_TOP_KEYS = ("process_names", "expected_groups", "lifecycle")
_EXPECTED_KEYS = ("group", "min", "max")


class ConfigError(ValueError):
    """The config can't be used. The message names the file and, when it can, the rule."""


class _RuleError(ValueError):
    """A problem inside one rule; parse_config prefixes the file and rule."""


@dataclass(frozen=True, slots=True)
class ProcAttributes:
    """What a rule may look at to select and name one process."""

    name: str  # comm: the second field of /proc/PID/stat, at most 15 bytes
    cmdline: tuple[str, ...]  # argv; empty for kernel threads and zombies
    cgroups: tuple[str, ...]  # cgroup paths; only filled when Config.needs_cgroups
    username: str  # effective user's name; only filled when Config.needs_username
    pid: int
    start_time: float  # epoch seconds
    uid: int = -1  # effective uid, -1 when unknown


class MatchNamer(Protocol):
    """Decides whether a process is wanted and which group it belongs to."""

    def match_and_name(self, attrs: ProcAttributes) -> tuple[bool, str]:
        """(True, group name) when wanted, else (False, "")."""
        ...


_NO_MATCH: tuple[bool, str] = (False, "")

# How to print each template field, as Go would print the process-exporter value.
_Getter = Callable[[ProcAttributes, Mapping[str, str]], str]


def _go_base(path: str) -> str:
    """Go's filepath.Base: last element, trailing slashes ignored; "" -> ".", "///" -> "/"."""
    if not path:
        return "."
    stripped = path.rstrip("/")
    if not stripped:
        return "/"
    return stripped[stripped.rfind("/") + 1 :]


def _exe_full(a: ProcAttributes, m: Mapping[str, str]) -> str:
    return a.cmdline[0] if a.cmdline else a.name


def _exe_base(a: ProcAttributes, m: Mapping[str, str]) -> str:
    return _go_base(a.cmdline[0]) if a.cmdline else a.name


_FIELDS: dict[str, _Getter] = {
    "Comm": lambda a, m: a.name,
    "ExeBase": _exe_base,
    "ExeFull": _exe_full,
    "Username": lambda a, m: a.username,
    "PID": lambda a, m: str(a.pid),
    "StartTime": lambda a, m: go_time_string(a.start_time),
    "Cgroups": lambda a, m: go_slice_string(a.cgroups),
    "Matches": lambda a, m: go_map_string(m),
}


def _field_getter(field: Field) -> _Getter:
    """The getter for ``{{.X}}`` / ``{{.Matches.K}}``; TemplateError for anything else."""
    head, rest = field.path[0], field.path[1:]
    if head not in _FIELDS:
        hint = difflib.get_close_matches(head, _FIELDS, n=1)
        suggestion = f" (did you mean .{hint[0]}?)" if hint else ""
        raise TemplateError(f"unknown template field {field}{suggestion}")
    if not rest:
        return _FIELDS[head]
    if head == "Matches" and len(rest) == 1:
        key = rest[0]
        return lambda a, m: m.get(key, NO_VALUE)
    raise TemplateError(f"unknown template field {field}")


def _compile_template(text: str) -> tuple[_Getter, frozenset[str]]:
    """A renderer for ``text`` and the top-level fields it reads."""
    getters: list[_Getter] = []
    used: set[str] = set()
    for part in parse_template(text):
        if isinstance(part, str):
            getters.append(lambda a, m, s=part: s)
        else:
            getters.append(_field_getter(part))
            used.add(part.path[0])
    if not getters:
        return (lambda a, m: ""), frozenset()
    if len(getters) == 1:
        return getters[0], frozenset(used)
    parts = tuple(getters)
    return (lambda a, m: "".join([g(a, m) for g in parts])), frozenset(used)


class Rule:
    """One entry of ``process_names``, compiled. Built by ``parse_config``."""

    __slots__ = (
        "index",
        "name",
        "comm",
        "exe",
        "cmdline",
        "regexes",
        "fields",
        "_exe_bases",
        "_exe_paths",
        "_render",
        "_wants_matches",
    )

    def __init__(
        self,
        index: int,
        name: str,
        comm: tuple[str, ...] | None,
        exe: tuple[str, ...] | None,
        regexes: tuple[GoRegex, ...],
    ) -> None:
        self.index: int = index  # position in process_names
        self.name: str = name  # the template text, default applied
        self.comm: frozenset[str] | None = frozenset(comm) if comm is not None else None
        self.exe: tuple[str, ...] | None = exe
        self.regexes: tuple[GoRegex, ...] = regexes
        self.cmdline: tuple[str, ...] | None = tuple(r.source for r in regexes) if regexes else None
        render, fields = _compile_template(name)
        self._render: _Getter = render
        #: top-level template fields the name reads ("Comm", "Matches", ...)
        self.fields: frozenset[str] = fields
        self._wants_matches: bool = "Matches" in fields
        # "exe" entries with a "/" must equal argv[0]; the others match its basename
        self._exe_paths: frozenset[str] = frozenset(e for e in exe or () if "/" in e)
        self._exe_bases: frozenset[str] = frozenset(e for e in exe or () if "/" not in e)

    def match_and_name(self, attrs: ProcAttributes) -> tuple[bool, str]:
        """(True, group name) if every selector of this rule matches ``attrs``."""
        if self.comm is not None and attrs.name not in self.comm:
            return _NO_MATCH
        cmdline = attrs.cmdline
        if self.exe is not None:
            if not cmdline:
                return _NO_MATCH
            argv0 = cmdline[0]
            if argv0 not in self._exe_paths and _go_base(argv0) not in self._exe_bases:
                return _NO_MATCH
        matches: dict[str, str] = {}
        if self.regexes:
            # Like process-exporter: regexes see "" when there is no cmdline (kernel
            # threads, zombies), so `^$` selects those and the default `.+` doesn't.
            joined = " ".join(cmdline)
            if self._wants_matches:
                for rx in self.regexes:
                    groups = rx.find_submatch(joined)
                    if groups is None:
                        return _NO_MATCH
                    # like Go: every group, by name; unnamed ones (and the whole match)
                    # all land on "", the last one winning
                    matches.update(zip(rx.subexp_names, groups))
            else:
                for rx in self.regexes:
                    if rx.compiled.search(joined) is None:
                        return _NO_MATCH
        return True, self._render(attrs, matches)

    def matches(self, attrs: ProcAttributes) -> bool:
        """Whether this rule selects ``attrs`` (for introspection and tests)."""
        return self.match_and_name(attrs)[0]

    def __repr__(self) -> str:
        items = [f"name={self.name!r}"]
        if self.comm is not None:
            items.append(f"comm={sorted(self.comm)!r}")
        if self.exe is not None:
            items.append(f"exe={list(self.exe)!r}")
        if self.cmdline is not None:
            items.append(f"cmdline={list(self.cmdline)!r}")
        return f"Rule(process_names[{self.index}], {', '.join(items)})"


@dataclass(frozen=True, slots=True)
class ExpectedGroup:
    """One entry of ``expected_groups``: the group should have at least ``min`` processes
    (and, when ``max`` is set, at most ``max``)."""

    group: str
    min: int = 1
    max: int | None = None


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """The ``lifecycle`` key: what counts as a restart and as a crash loop."""

    #: a start this soon (seconds) after an exit of the same group and executable is a restart
    restart_window_s: float = 10.0
    #: this many restarts after failed exits ...
    crashloop_restarts: int = 5
    #: ... within this many seconds make a crash loop
    crashloop_window_s: float = 300.0
    #: a crash loop ends once the group has stayed up this long without a restart
    stable_after_s: float = 600.0


class Config:
    """The compiled config: an ordered list of rules, the first match names the process.

    Implements ``MatchNamer``. Immutable once built, so one instance may be shared by
    threads."""

    __slots__ = ("source", "rules", "expected", "lifecycle", "needs_cgroups", "needs_username")

    def __init__(
        self,
        rules: tuple[Rule, ...],
        source: str = "<string>",
        *,
        expected: tuple[ExpectedGroup, ...] = (),
        lifecycle: LifecycleConfig | None = None,
    ) -> None:
        self.source: str = source  # the file name (or "<string>"), as in error messages
        self.rules: tuple[Rule, ...] = rules
        #: ``expected_groups``, in file order
        self.expected: tuple[ExpectedGroup, ...] = expected
        #: ``lifecycle``, defaults filled in
        self.lifecycle: LifecycleConfig = lifecycle if lifecycle is not None else LifecycleConfig()
        fields: frozenset[str] = frozenset().union(*(r.fields for r in rules))
        #: some template prints {{.Cgroups}}: the caller must read /proc/PID/cgroup
        self.needs_cgroups: bool = "Cgroups" in fields
        #: some template prints {{.Username}}: the caller must resolve the uid
        self.needs_username: bool = "Username" in fields

    def match_and_name(self, attrs: ProcAttributes) -> tuple[bool, str]:
        """Call once per new process: (True, group name) from the first matching rule,
        or (False, "") when no rule matches."""
        for rule in self.rules:
            result = rule.match_and_name(attrs)
            if result[0]:
                return result
        return _NO_MATCH

    def __repr__(self) -> str:
        rules = ", ".join(repr(r) for r in self.rules)
        return f"Config(source={self.source!r}, rules=[{rules}])"


# -- loading --------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader, with two changes.

    Plain scalars stay text (only ``~``/``null``/empty resolve to None): every field of
    the config is a string, and Go's yaml.v2 fills a string from the scalar's text, so
    ``comm: [123]`` means comm "123" and ``name: 1.50`` the name "1.50" there too.
    Duplicate keys are refused: the second "cmdline:" of a rule would otherwise silently
    replace the first."""


_KEEP_RESOLVED = {"tag:yaml.org,2002:null", "tag:yaml.org,2002:merge"}
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in _KEEP_RESOLVED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _unknown_key(key: object, allowed: tuple[str, ...], where: str) -> str:
    hint = difflib.get_close_matches(str(key), allowed, n=1)
    suggestion = f"did you mean {hint[0]}?" if hint else f"expected {', '.join(allowed)}"
    return f"unknown {where}key {key!r} ({suggestion})"


def _rule_label(index: int, raw: Mapping[Any, Any]) -> str:
    label = f"process_names[{index}]"
    name = raw.get("name")
    if isinstance(name, str) and name:
        return f'{label} (name "{name}")'
    for key in _SELECTORS:
        values = raw.get(key)
        if isinstance(values, list) and values:
            more = ", ..." if len(values) > 1 else ""
            return f"{label} ({key} {values[0]!r}{more})"
    return label


def _string_list(key: str, value: object) -> tuple[str, ...]:
    if value is None:
        raise _RuleError(f"{key} has no value; give a list, e.g. {key}: [...]")
    if not isinstance(value, list):
        raise _RuleError(f"{key} must be a list of strings, got {_describe(value)}")
    if not value:
        raise _RuleError(f"{key} is an empty list; a selector needs at least one entry")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _RuleError(f"{key}[{i}] must be a string, got {_describe(item)}")
    return tuple(value)


def _build_rule(index: int, raw: Mapping[Any, Any]) -> Rule:
    """Compile one rule; raises _RuleError, TemplateError or GoRegexError (rule-local)."""
    for key in raw:
        if key not in _RULE_KEYS:
            raise _RuleError(_unknown_key(key, _RULE_KEYS, ""))
    name = raw.get("name")
    if name is None or name == "":
        name = DEFAULT_NAME_TEMPLATE  # process-exporter: empty name -> default
    elif not isinstance(name, str):
        raise _RuleError(f"name must be a string, got {_describe(name)}")
    if not any(key in raw for key in _SELECTORS):
        raise _RuleError("no selector: give at least one of comm, exe, cmdline")
    comm = _string_list("comm", raw["comm"]) if "comm" in raw else None
    exe = _string_list("exe", raw["exe"]) if "exe" in raw else None
    regexes: list[GoRegex] = []
    if "cmdline" in raw:
        for i, pattern in enumerate(_string_list("cmdline", raw["cmdline"])):
            try:
                regexes.append(compile_go(pattern))
            except GoRegexError as exc:
                raise GoRegexError(f"cmdline[{i}] {pattern!r}: bad regex: {exc}") from None
    return Rule(index, name, comm, exe, tuple(regexes))


def _yaml_error(source: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    detail = f" ({context})" if context else ""
    return ConfigError(f"{source}: {where}YAML error: {problem}{detail}")


# Plain scalars arrive as text (see _StrictLoader): numbers are parsed here, ASCII digits only.
_INT = re.compile(r"[0-9]{1,9}")
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
#: upper bound of ``crashloop_restarts``: a group keeps that many restart times
MAX_CRASHLOOP_RESTARTS = 1000


def _int_value(where: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, str) or not _INT.fullmatch(value):
        raise _RuleError(f"{where} must be a whole number, got {_describe(value)}")
    number = int(value)
    if not low <= number <= high:
        raise _RuleError(f"{where} must be between {low} and {high}, got {number}")
    return number


def _seconds_value(where: str, value: object) -> float:
    if not isinstance(value, str) or not _SECONDS.fullmatch(value):
        raise _RuleError(f"{where} must be a number of seconds, got {_describe(value)}")
    number = float(value)
    if number <= 0:
        raise _RuleError(f"{where} must be more than 0 seconds")
    return number


def _expected_label(index: int, raw: object) -> str:
    label = f"expected_groups[{index}]"
    if isinstance(raw, dict) and isinstance(raw.get("group"), str) and raw["group"]:
        return f'{label} (group "{raw["group"]}")'
    return label


def _build_expected(raw: object) -> ExpectedGroup:
    """One ``expected_groups`` entry; raises _RuleError."""
    if not isinstance(raw, dict):
        raise _RuleError(f"must be a mapping like {{group: NAME, min: 1}}, got {_describe(raw)}")
    for key in raw:
        if key not in _EXPECTED_KEYS:
            raise _RuleError(_unknown_key(key, _EXPECTED_KEYS, ""))
    if "group" not in raw:
        raise _RuleError("no group: name it, e.g. {group: postgres, min: 1}")
    group = raw["group"]
    if not isinstance(group, str) or not group:
        raise _RuleError(f"group must be a group name, got {_describe(group)}")
    low = _int_value("min", raw["min"], 1, 1_000_000) if "min" in raw else 1
    high = _int_value("max", raw["max"], 1, 1_000_000) if "max" in raw else None
    if high is not None and high < low:
        raise _RuleError(f"max ({high}) is below min ({low})")
    return ExpectedGroup(group, low, high)


def _parse_expected(source: str, raw: object) -> tuple[ExpectedGroup, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: expected_groups must be a list of {{group: NAME, min: N}}, got {_describe(raw)}")
    found: dict[str, ExpectedGroup] = {}
    for index, item in enumerate(raw):
        try:
            entry = _build_expected(item)
        except _RuleError as exc:
            raise ConfigError(f"{source}: {_expected_label(index, item)}: {exc}") from None
        if entry.group in found:
            raise ConfigError(f"{source}: {_expected_label(index, item)}: the group is listed twice")
        found[entry.group] = entry
    return tuple(found.values())


_LIFECYCLE_KEYS = ("restart_window_s", "crashloop_restarts", "crashloop_window_s", "stable_after_s")


def _parse_lifecycle(source: str, raw: object) -> LifecycleConfig:
    if raw is None:
        return LifecycleConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: lifecycle must be a mapping of settings, got {_describe(raw)}")
    values: dict[str, Any] = {}
    try:
        for key, value in raw.items():
            if key not in _LIFECYCLE_KEYS:
                raise _RuleError(_unknown_key(key, _LIFECYCLE_KEYS, ""))
            if key == "crashloop_restarts":
                values[key] = _int_value(key, value, 1, MAX_CRASHLOOP_RESTARTS)
            else:
                values[key] = _seconds_value(key, value)
    except _RuleError as exc:
        raise ConfigError(f"{source}: lifecycle: {exc}") from None
    return LifecycleConfig(**values)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and compile a config from YAML text; ``source`` names it in errors."""
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    if doc is None:
        raise ConfigError(f"{source}: empty config; expected a mapping with process_names")
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping with process_names, got {type(doc).__name__}"
        )
    for key in doc:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{source}: {_unknown_key(key, _TOP_KEYS, 'top-level ')}")
    if "process_names" not in doc:
        raise ConfigError(f"{source}: no process_names")
    raw_rules = doc["process_names"]
    if not isinstance(raw_rules, list):
        what = "nothing" if raw_rules is None else _describe(raw_rules)
        raise ConfigError(f"{source}: process_names must be a list of rules, got {what}")
    if not raw_rules:
        raise ConfigError(f"{source}: process_names is empty; no process would be watched")
    rules: list[Rule] = []
    for index, raw in enumerate(raw_rules):
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{source}: process_names[{index}] must be a mapping with name/comm/exe/cmdline, "
                f"got {_describe(raw)}"
            )
        try:
            rules.append(_build_rule(index, raw))
        except (_RuleError, TemplateError, GoRegexError) as exc:
            raise ConfigError(f"{source}: {_rule_label(index, raw)}: {exc}") from None
    return Config(
        tuple(rules),
        source,
        expected=_parse_expected(source, doc.get("expected_groups")),
        lifecycle=_parse_lifecycle(source, doc.get("lifecycle")),
    )


def load_config(path: str | PathLike[str]) -> Config:
    """Read and compile a process-exporter YAML file (call once, at start-up)."""
    source = str(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_config(text, source)


def default_config() -> Config:
    """process-exporter's packaged config: every process with a non-empty cmdline,
    grouped by comm."""
    return parse_config(DEFAULT_CONFIG_TEXT, "<default config>")
