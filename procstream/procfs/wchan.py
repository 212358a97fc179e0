"""Parse ``/proc/PID/wchan`` (and ``task/TID/wchan``): the kernel function a sleeping
thread waits in, such as ``do_epoll_wait`` or ``futex_wait_queue``.

The file holds the symbol name and no newline; ``0`` (or nothing) when the thread is not
waiting (running) or the kernel won't tell us (no ptrace read access). The name comes from
the kernel's symbol table, not from the process, but it becomes a label value: it is
capped and anything that is not a symbol character is refused.
"""

from __future__ import annotations

from typing import Final

from .errors import ProcfsParseError

__all__ = ["MAX_WCHAN", "parse_wchan"]

#: Longest symbol name accepted (kernel symbols are at most 128 bytes, KSYM_NAME_LEN).
MAX_WCHAN: Final = 128

_SYMBOL_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.$")


def parse_wchan(data: bytes) -> str:
    """The wait channel, or ``""`` when the thread isn't waiting (``0``) or it's hidden."""
    name = data.strip()
    if not name or name == b"0":
        return ""
    if len(name) > MAX_WCHAN or not _SYMBOL_BYTES.issuperset(name):
        raise ProcfsParseError(f"wchan: not a kernel symbol: {name[:80]!r}")
    return name.decode("ascii")
