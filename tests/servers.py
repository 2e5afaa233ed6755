"""Start a real server on 127.0.0.1 for a test, and stop it by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).parent.parent


def eventually(check: Callable[[], object], seconds: float = 1.0) -> bool:
    """Whether ``check()`` turns true within ``seconds`` (polled every 20 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(
    args: list[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    ready_path: str = "/",
    timeout: float = 30.0,
) -> Iterator[str]:
    """Run ``args`` (a server listening on ``port``) until the block ends."""
    log = open(os.devnull, "w")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{args} exited with {process.returncode}")
            try:
                if httpx.get(base + ready_path, timeout=2.0).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{args} did not answer on {base} in {timeout} s")
            time.sleep(0.1)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


@contextmanager
def serving(app: object, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread of this process (so the
    test can reach its gate) on 127.0.0.1; yields the base URL."""
    import threading

    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class RedisServer:
    """A real redis-server on 127.0.0.1 that a test can stop and start again.

    ``extra`` adds arguments (``--cluster-enabled yes``, ``--replicaof``...);
    ``sentinel=True`` starts it as a Sentinel (``redis-server --sentinel``).
    """

    def __init__(self, *extra: str, port: int | None = None, sentinel: bool = False) -> None:
        import shutil
        import tempfile

        path = shutil.which("redis-server")
        if path is None:
            raise RuntimeError("redis-server is not installed: ./dev test installs it (apt-get)")
        self.binary = path
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = list(extra)
        self.sentinel = sentinel
        self.directory = tempfile.mkdtemp(prefix=f"redis-{self.port}-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        common = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory]
        if self.sentinel:
            config = Path(self.directory) / "sentinel.conf"
            if not config.exists():
                config.write_text("\n".join(self.extra) + "\n")
            args = [self.binary, str(config), "--sentinel", *common]
        else:
            args = [self.binary, *common, "--save", "", "--appendonly", "no"]
            args += ["--enable-debug-command", "local", *self.extra]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a primary lost without a goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``redis-cli`` against this server; its output."""
        result = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return result.stdout.strip()

    def cleanup(self) -> None:
        import shutil

        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisClusterServers:
    """Three redis-server masters on 127.0.0.1 joined into one Redis Cluster."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",  # the bus: port + 10000 may be past 65535
                str(free_port()),
            )
            for _ in range(masters)
        ]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{node.port}" for node in self.nodes]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in self.nodes):
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not become ready")
            time.sleep(0.1)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class RedisSentinelSet:
    """A primary, one replica and three Sentinels (``redis-server --sentinel``) on 127.0.0.1.

    The Sentinels call the primary ``service`` and fail over 0.5 s after
    it stops answering.
    """

    def __init__(self, service: str = "gate") -> None:
        self.service = service
        self.primary = RedisServer()
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.primary.port))
        monitor = [
            f"sentinel monitor {service} 127.0.0.1 {self.primary.port} 2",
            f"sentinel down-after-milliseconds {service} 500",
            f"sentinel failover-timeout {service} 2000",
            f"sentinel parallel-syncs {service} 1",
        ]
        self.sentinels = [RedisServer(*monitor, sentinel=True) for _ in range(3)]
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{service}"

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        deadline = time.monotonic() + 20
        while "master_link_status:up" not in self.replica.cli("INFO", "replication"):
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not sync")
            time.sleep(0.1)
        while not all(
            "num-other-sentinels\n2" in s.cli("SENTINEL", "MASTER", self.service)
            and "num-slaves\n1" in s.cli("SENTINEL", "MASTER", self.service)
            for s in self.sentinels
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the Sentinels did not find each other")
            time.sleep(0.1)

    def primary_port(self) -> int:
        """The port the Sentinels name as the primary now."""
        answer = self.sentinels[0].cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(answer.split()[1])

    def cleanup(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.cleanup()
