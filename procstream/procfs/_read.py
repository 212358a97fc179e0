"""Read one /proc file into ``bytes``, mapping errno to what the callers act on.

``read_file`` is the only place that touches file descriptors for regular /proc files, so
the errno rules (see ``errors.py``) live in one place:

- ENOENT, ESRCH -> ``ProcessLookupError`` (the process, or this file, is gone); the
  original errno is kept on the exception, so a caller can tell "file missing" (ENOENT)
  from "process reaped while we held the file open" (ESRCH);
- EACCES, EPERM -> ``PermissionError`` (Python already maps these);
- anything else propagates as the ``OSError`` it is.
"""

from __future__ import annotations

import os

__all__ = ["read_file"]

_FLAGS = os.O_RDONLY | os.O_CLOEXEC
# One read of this size holds every file we read on the hot path (stat, io and status
# are far smaller); a bigger buffer would only cost the kernel a bigger temporary one.
_BUFSIZE = 8192


def read_file(path: str, *, until_eof: bool = True, limit: int | None = None) -> bytes:
    """The whole content of the /proc file at ``path``.

    Call with ``until_eof=True`` (the default) for files that may exceed one read
    (``status``, ``cmdline``, ``limits``, ``cgroup``): it reads until ``read`` returns
    nothing. ``until_eof=False`` is for the small single-record files (``stat``, ``io``),
    which the kernel renders in one go: a read shorter than the buffer is then the whole
    file, which saves one ``read`` syscall per file on the hot path; a full buffer still
    reads on.

    ``limit``: read at most this many bytes (a file whose size its owner chooses, like
    ``cmdline``); the result is then the file's first ``limit`` bytes.
    """
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError as exc:
        raise ProcessLookupError(exc.errno, exc.strerror, path) from None
    try:
        data = os.read(fd, _BUFSIZE if limit is None else min(_BUFSIZE, limit))
        if not until_eof and len(data) < _BUFSIZE:
            return data
        if not data:
            return data
        if limit is not None:
            return _read_up_to(fd, data, limit)
        chunk = os.read(fd, _BUFSIZE)
        if not chunk:
            return data
        chunks = [data, chunk]
        while chunk:
            chunk = os.read(fd, _BUFSIZE)
            chunks.append(chunk)
        return b"".join(chunks)
    except FileNotFoundError as exc:
        raise ProcessLookupError(exc.errno, exc.strerror, path) from None
    except OSError as exc:
        # Python names ESRCH ProcessLookupError already; keep the path for the message.
        if exc.filename is None:
            exc.filename = path
        raise
    finally:
        os.close(fd)


def _read_up_to(fd: int, first: bytes, limit: int) -> bytes:
    chunks = [first]
    size = len(first)
    while size < limit:
        chunk = os.read(fd, min(_BUFSIZE, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
