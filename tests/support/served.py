"""A real ``procstream serve`` (or ``fleet``) process for tests (not a test module).

``Served`` starts the service on a free loopback port, waits until /healthz answers,
and stops it (SIGTERM, then SIGKILL) when the test ends. ``Client`` is a websockets
client that reads frames (JSON arrays) into a flat list of objects.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.support.network import free_port
from tests.support.waiting import wait_for

__all__ = ["Served", "Client", "http_get"]


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


class Served:
    """``procstream serve`` (or another serving ``command``) in a child process on 127.0.0.1."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        port: int | None = None,
        nofile: tuple[int, int] | None = None,
        command: str = "serve",
    ) -> None:
        """``nofile``: the (soft, hard) descriptor limit the server starts with."""
        self.command = command
        self.port = port or free_port()
        self.nofile = nofile
        self.args = ["--listen", f"127.0.0.1:{self.port}", *args]
        self.env = dict(os.environ, **(env or {}))
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, wait: bool = True) -> Served:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._log = out if self.log_path else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "procstream", self.command, *self.args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if self.log_path else subprocess.DEVNULL,
            env=self.env,
            preexec_fn=None if self.nofile is None else self._limit,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> Served:
        """Wait until /healthz says 200 (a ``fleet``: caught up with its stream)."""
        wait_for("the server to answer /healthz", self._answers, timeout=timeout)
        return self

    def kill(self) -> None:
        """SIGKILL (a crash), and wait for it."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _limit(self) -> None:  # in the child, before exec
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"procstream {self.command} exited with {self.proc.returncode}: {self.output()}")
        try:
            return http_get(self.url + "/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL if it hangs, then fails)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
                raise AssertionError(f"procstream {self.command} did not stop on SIGTERM")
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except AssertionError:
                pass


class Client:
    """A /ws subscriber collecting every object it receives, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.objects: list[dict[str, Any]] = []
        self.frames = 0
        self._reader = asyncio.create_task(self._read())
        self.closed: BaseException | None = None

    @classmethod
    async def connect(cls, url: str, **kw: Any) -> Client:
        ws = await connect(url, open_timeout=10, **kw)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                batch = orjson.loads(message)
                assert isinstance(batch, list), "every frame must be a JSON array"
                self.frames += 1
                self.objects.extend(batch)
        except Exception as exc:  # the test inspects how the connection ended
            self.closed = exc

    def of(self, *types: str, **match: Any) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("type") in types and all(o.get(k) == v for k, v in match.items())]

    def events(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if "seq" in o and o.get("type") not in ("snapshot", "bookmark")]

    async def wait(self, what: str, cond: Any, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if self._reader.done():
                raise AssertionError(f"connection ended ({self.closed!r}) while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last objects: {self.objects[-5:]}")
            await asyncio.sleep(0.02)

    async def send(self, obj: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(obj).decode())

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


def seqs(objs: Iterable[dict[str, Any]]) -> list[int]:
    return [o["seq"] for o in objs]
