"""The chaos run's processes: a restartable redis-server with AOF, and `ringez-worker` children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from ringez_worker.sandbox.redis_server import find_server_binary

ROOT = Path(__file__).resolve().parents[2]


class RedisProc:
    """redis-server (or valkey-server) on a fixed loopback port, AOF on, restartable in place.

    `appendfsync always`: Redis writes and fsyncs the AOF before it answers, so an event the
    receiver acknowledged survives even a SIGKILL of Redis.
    """

    def __init__(self, port: int, data_dir: Path, log_path: Path) -> None:
        self.binary, self.label = find_server_binary()
        self.port = port
        self.dir = data_dir
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited at start; see {self.log_path}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.label} did not answer PING within {timeout} s")

    def ping(self) -> bool:
        """True once the server answers PONG (not while it is still loading its AOF)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server: SIGTERM (it flushes its AOF and exits) or SIGKILL (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class Child:
    """`python -m ringez_worker.worker.cli <args>` with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # closed in wait()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "ringez_worker.worker.cli", *args],
            env=full_env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.started_at = time.time()
        self.killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to finish or give anything back."""
        if self.alive():
            self.popen.kill()
            self.killed_at = time.time()
        self.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int | None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.killed_at = self.killed_at or time.time()
            self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
