"""Helpers shared by the benchmark scripts (not a benchmark itself).

Child processes, their memory and CPU from /proc, signed request bodies, the machine's
description, percentiles. Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ringez_worker import signature  # noqa: E402
from ringez_worker.worker.cli import build_event  # noqa: E402

SECRET = "whsec_bench_secret"
WEBHOOK_PATH = "/webhooks/ringez"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ensure_apt(binary: str, package: str) -> str:
    """Path of `binary`, installing the Debian `package` first when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    print(f"{binary} missing: apt-get install -y {package}", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, timeout=600)
    found = shutil.which(binary)
    if not found:
        raise SystemExit(f"could not install {package}")
    return found


def wait_for_port(port: int, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {deadline_s} s")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid` in kB; empty once the process is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by `pid` and its live descendants (taskiq works in a child)."""
    return sum(cpu_seconds(p) for p in process_tree(pid))


def self_cpu_seconds() -> float:
    """CPU time this (benchmark) process has used: its own share of the machine's busy time."""
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def wait_quiet(max_busy: float = 0.15, window_s: float = 1.0, deadline_s: float = 120.0) -> float:
    """Wait (at most `deadline_s`) for a window in which the whole machine is nearly idle.

    The box is shared; a benchmark that starts while something else is busy measures
    that too. Returns the busy share (in cores) of the last window observed.
    """
    end = time.monotonic() + deadline_s
    while True:
        before = machine_busy_seconds()
        time.sleep(window_s)
        busy = (machine_busy_seconds() - before) / window_s
        if busy <= max_busy or time.monotonic() > end:
            return round(busy, 3)


class Service:
    """A child Python process whose output goes to a log file (no pipe to keep drained)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        log_dir: Path,
        *,
        python: str | None = None,
        cwd: Path | None = None,
    ):
        # `python` and `cwd`: another checkout's interpreter and tree (ingest's ringez-base).
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        full_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LOG_FORMAT": "json",
            "HOST": "127.0.0.1",
            **env,
        }
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [python or sys.executable, *argv],
            env=full_env,
            cwd=cwd or ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def memory_kb(self) -> dict[str, int]:
        return proc_status(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, deadline_s: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(deadline_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def signed_request(call_id: str, session: str = "sess_bench") -> tuple[bytes, str]:
    """A fresh Ringez-shaped body (timestamp now) and its X-Ringez-Signature."""
    body = build_event(
        "call.completed",
        {"call_id": call_id, "session_id": session, "duration": 42, "status": "completed"},
    )
    return body, signature.sign(body, SECRET)


def delivery_id(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(len(sorted_values), rank) - 1]


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    free = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()
    mem = free[1].split()[1] if len(free) > 1 else "?"
    server = shutil.which("redis-server")
    version = "?"
    if server:
        out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        version = out.split()[2].removeprefix("v=") if out else "?"
    return {
        "nproc": str(os.cpu_count()),
        "memory": mem,
        "cpu": cpu,
        "python": platform.python_version(),
        "redis_server": version,
    }
