"""Count the open file descriptors of a process: the entries of ``/proc/PID/fd``.

Since Linux 6.2, ``stat()`` on a procfs ``fd`` directory reports the number of open fds
as its size, which costs one syscall and no directory listing. It is 0 on older kernels
(and for a process with no fds, where listing is cheap anyway), so a size of 0 falls back
to listing. On a tree that is not procfs (a copy for tests), a directory's size means
something else: the caller says so with ``size_counts=False``.
"""

from __future__ import annotations

import os

__all__ = ["count_open_fds"]


def count_open_fds(path: str, *, size_counts: bool = True) -> int:
    """Number of entries in the ``fd`` directory at ``path``.

    Raises ``ProcessLookupError`` if it is gone (errno kept: ENOENT or ESRCH) and
    ``PermissionError`` if it may not be read (another user's process, when not root;
    the size shortcut works even then on Linux >= 6.2).
    """
    try:
        if size_counts:
            size = os.stat(path).st_size
            if size > 0:
                return size
        return len(os.listdir(path))
    except FileNotFoundError as exc:
        raise ProcessLookupError(exc.errno, exc.strerror, path) from None
