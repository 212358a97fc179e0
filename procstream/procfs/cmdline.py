"""Parse ``/proc/PID/cmdline``: argv as NUL-terminated strings.

Empty for kernel threads and zombies. Arguments are decoded as UTF-8 with replacement
characters, so whatever a process put in its argv stays JSON-encodable downstream.
"""

from __future__ import annotations

__all__ = ["READ_LIMIT", "parse_cmdline"]

#: Bytes of ``cmdline`` read at most. An argv can be as long as the kernel's ``ARG_MAX``
#: (2 MiB and more) and its owner chooses it: events keep no more than this of it
#: (``procstream.schema.CMDLINE_MAX_BYTES``), and reading more would only cost the poll.
READ_LIMIT = 16 * 1024


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """argv from a ``cmdline`` file; ``()`` when it is empty. Never fails."""
    if not data:
        return ()
    # NUL is one byte in UTF-8, so decoding first and splitting after is equivalent to
    # splitting bytes, and decodes once instead of once per argument.
    args = data.decode("utf-8", "replace").split("\0")
    if args[-1] == "":
        # the terminator of the last argument (absent when a process rewrote its argv
        # as one space-separated string, setproctitle style)
        args.pop()
    return tuple(args)
