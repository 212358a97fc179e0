"""The parts every command builds from its options: the config's rules, the /proc
reader, the grouper and the event builder — and the error that ends a command with
exit code 2.
"""

from __future__ import annotations

import argparse

from .config import Config, ConfigError, default_config, load_config
from .events import EventBuilder
from .grouper import Grouper
from .procfs import FS, ProcfsError
from .redact import RedactPatternError, Redactor

__all__ = ["UsageError", "load_namer", "build_core"]


class UsageError(Exception):
    """A user error that ends the program with exit code 2 and this message."""


def load_namer(path: str | None) -> Config:
    """The config file's rules, or process-exporter's packaged default."""
    if path is None:
        return default_config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UsageError(f"bad config: {exc}") from exc


def build_core(args: argparse.Namespace) -> tuple[FS, Grouper, EventBuilder]:
    """The /proc reader, the grouper and the event builder the options ask for."""
    namer = load_namer(args.config)
    try:
        # process-exporter's optional families (serve only): read only what is exported
        fs = FS(
            args.procfs,
            threads=getattr(args, "threads", False),
            smaps=getattr(args, "gather_smaps", False),
            wchan=getattr(args, "threads_wchan", False),
        )
    except ProcfsError as exc:
        raise UsageError(f"cannot read --procfs: {exc}") from exc
    try:
        redactor = Redactor(args.redact, drop_cmdline=args.no_cmdline)
    except RedactPatternError as exc:
        raise UsageError(str(exc)) from exc
    expiry = getattr(args, "group_expiry", None)
    if expiry is not None and expiry < 0:
        raise UsageError("--group-expiry must be >= 0")
    grouper = Grouper(
        namer,
        track_children=args.children,
        remove_empty_groups=args.remove_empty_groups,
        recheck=args.recheck,
        group_ttl=None if getattr(args, "keep_empty_groups", False) else expiry,
    )
    builder = EventBuilder(username=grouper.username, redact=redactor)
    # Expected groups exist (with 0 processes) from the first poll on, never seen or not.
    grouper.pin(e.group for e in namer.expected)
    builder.set_expected(namer.expected)
    return fs, grouper, builder
