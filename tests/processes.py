"""Running the service's own commands as subprocesses, and reading their logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Proc:
    """A `ringez-worker ...` child whose stderr+stdout lines are collected as they arrive."""

    def __init__(self, *args: str, env: dict[str, str], unset: tuple[str, ...] = ()) -> None:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json", **env}
        for name in unset:
            full_env.pop(name, None)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "ringez_worker.worker.cli", *args],
            env=full_env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, needle: str, deadline_s: float = 20.0) -> str:
        """Block until a line containing `needle` appears; fail if the process dies first."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.popen.poll() is not None:
                self._reader.join(2)
                raise AssertionError(f"process exited before {needle!r}:\n{self.output()[-3000:]}")
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} within {deadline_s} s:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, deadline_s: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(deadline_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._reader.join(5)
        return self.popen.returncode


def run_cli(*args: str, env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "ringez_worker.worker.cli", *args],
        env=full_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for_port(port: int, deadline_s: float = 20.0) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:`port`."""
    import socket

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listening on port {port} after {deadline_s} s")
