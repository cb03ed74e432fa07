"""Drain rate against peer engines (issue 21): jobs/s, worker CPU and Redis commands per job.

Each engine drains the same backlog of `--events` jobs whose only work is one `INCR`
through redis-py (`bench/peers/_incr.py`; the project's worker: `bench/incr_handlers.py`
through `ctx.redis`), with one worker process at concurrency 100, uvloop and WARNING
logs. Every run gets a fresh loopback redis-server; the jobs are queued through the
engine's own client before its worker starts, then:

- the clock runs from the first INCR to the N-th (the counter key is polled every
  2 ms), so interpreter start-up and imports are not timed; jobs/s is (N - 1) / that;
- worker CPU is the worker's whole process tree (taskiq runs its jobs in a child) over
  the same window, from /proc; Redis CPU likewise;
- Redis commands per job are `INFO commandstats` calls (`CONFIG RESETSTAT` after the
  load, so only the worker's are counted; `redis.call` inside Lua scripts counts too),
  read 0.3 s after the N-th INCR so the last jobs' bookkeeping is in, minus the bench's
  own polling GETs, divided by N;
- "other CPU" is what the rest of the machine did in the window (/proc/stat busy time
  less the worker, Redis and this script), in cores: the box is shared.

Engines run in interleaved rounds (order reversed every other round); the table gives
medians. Peer engines run in their own venvs under ~/.cache/ringez-bench-peers, made on
first use (`bench/peers/venvs.py`); the project's worker runs from this interpreter.

    python bench/drain_peers.py                       # 6 engines x 3 rounds x 20,000 jobs
    python bench/drain_peers.py --engines ringez,arq --rounds 1 --events 5000
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    cpu_seconds,
    machine,
    machine_busy_seconds,
    self_cpu_seconds,
    tree_cpu_seconds,
    wait_quiet,
)
from bench.drain import load  # noqa: E402
from bench.peers import venvs  # noqa: E402
from ringez_worker.keys import Keys  # noqa: E402
from ringez_worker.sandbox.redis_server import RedisServer  # noqa: E402

PEERS = ROOT / "bench" / "peers"
COUNTER = "bench:incr"
POLL_S = 0.002
# Commands that are the bench's, not the worker's.
BENCH_COMMANDS = {"info", "config"}


@dataclass(frozen=True)
class Engine:
    """How to queue jobs for one engine and start its worker."""

    name: str
    label: str
    peer: str | None  # venv under ~/.cache/ringez-bench-peers; None: the project's own
    module: str = ""  # bench/peers/<module>.py
    env: dict[str, str] = field(default_factory=dict)

    def python(self) -> str:
        if self.peer == BASE:
            return str(base_root() / ".venv" / "bin" / "python")
        return sys.executable if self.peer is None else str(venvs.python_for(self.peer))

    def worker_argv(self) -> list[str]:
        if self.peer in (None, BASE):
            return [self.python(), "-m", "ringez_worker.worker.cli", "worker"]
        if self.peer == "taskiq":
            taskiq = str(Path(self.python()).parent / "taskiq")
            return [
                *(taskiq, "worker", "taskiq_peer:broker", "--workers", "1"),
                *("--max-async-tasks", "100", "--log-level", "WARNING"),
            ]
        return [self.python(), str(PEERS / f"{self.module}.py"), "worker"]


# `ringez-base`: this project's worker as of another checkout (BENCH_RINGEZ_BASE, with
# its own venv in .venv, e.g. `git archive main | tar -x -C DIR` and `pip install -e
# "DIR[fast]"`), for a before/after in the same run. Its jobs are queued as ours.
BASE = "ringez-base"


def base_root() -> Path:
    return Path(os.environ.get("BENCH_RINGEZ_BASE", "/tmp/rz-base"))


ENGINES = {
    e.name: e
    for e in (
        Engine(
            "taskiq-stream",
            "taskiq 0.13 + taskiq-redis stream broker (`--max-async-tasks 100`)",
            "taskiq",
            "taskiq_peer",
            {"BENCH_TASKIQ_BROKER": "stream"},
        ),
        Engine(
            "taskiq-list",
            "taskiq list broker (no ack state)",
            "taskiq",
            "taskiq_peer",
            {"BENCH_TASKIQ_BROKER": "list"},
        ),
        Engine(
            "arq",
            "arq 0.28 (`max_jobs=100, poll_delay=0.01, keep_result=0`)",
            "arq",
            "arq_peer",
        ),
        Engine("ringez", "**this project's worker** (`WORKER_MAX_JOBS=100`)", None),
        Engine(BASE, "this project's worker before (BENCH_RINGEZ_BASE checkout)", BASE),
        Engine("saq", "SAQ 0.26 (`concurrency=100`)", "saq", "saq_peer"),
        Engine("streaq", "streaQ 7.2 (`concurrency=100`)", "streaq", "streaq_peer"),
    )
}


def engine_env(engine: Engine, url: str) -> dict[str, str]:
    env = {**os.environ, "BENCH_REDIS_URL": url, **engine.env}
    if engine.peer in (None, BASE):
        env.update(
            {
                "PYTHONPATH": str(ROOT if engine.peer is None else base_root()),
                "REDIS_URL": url,
                "RINGEZ_HANDLERS": "bench.incr_handlers",
                "LOG_LEVEL": "WARNING",
                "LOG_FORMAT": "json",
                "WORKER_MAX_JOBS": "100",
                "RINGEZ_WEBHOOK_SECRET": "whsec_bench",
                "WORKER_METRICS_PORT": "0",
            }
        )
    else:
        # Only the peer's own folder: the repository root's worker/, handlers/ ...
        # must not shadow anything in a peer's venv.
        env["PYTHONPATH"] = str(PEERS)
    return env


def enqueue(engine: Engine, url: str, events: int) -> None:
    """Queue `events` jobs through the engine's own client (all due now)."""
    if engine.peer in (None, BASE):
        client = redis.Redis.from_url(url)
        load(client, Keys(), events, int(time.time() * 1000))  # as bench/drain.py does
        client.close()
        return
    argv = [engine.python(), str(PEERS / f"{engine.module}.py"), "enqueue", str(events)]
    subprocess.run(argv, env=engine_env(engine, url), cwd=PEERS, check=True, timeout=600)


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def stop_group(popen: subprocess.Popen[bytes], deadline_s: float = 15.0) -> None:
    """SIGTERM the worker's own process group (it was started in a new session), then KILL."""
    if popen.poll() is None:
        os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(deadline_s)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(5)
    # A child left behind by a parent that exited (taskiq's worker process).
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_one(
    engine: Engine, events: int, log_dir: Path, profile: bool, round_no: int = 0
) -> dict[str, Any]:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        redis_pid = server.process.pid if server.process else 0
        started = time.monotonic()
        enqueue(engine, server.url, events)
        load_s = time.monotonic() - started
        client.config_resetstat()
        quiet = wait_quiet()
        log_path = log_dir / f"{engine.name}.log"
        env = engine_env(engine, server.url)
        polls = 0
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                engine.worker_argv(),
                env=env,
                cwd={None: ROOT, BASE: base_root()}.get(engine.peer, PEERS),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            spawned = time.monotonic()
            spy = None
            try:
                first: tuple[float, float, float, float, float] | None = None
                deadline = spawned + max(120.0, events / 50)
                count = 0
                while time.monotonic() < deadline:
                    count = int(client.get(COUNTER) or 0)
                    polls += 1
                    now = time.monotonic()
                    if first is None and count > 0:
                        first = (
                            now,
                            tree_cpu_seconds(popen.pid),
                            cpu_seconds(redis_pid),
                            machine_busy_seconds(),
                            self_cpu_seconds(),
                        )
                        if profile:
                            spy = start_spy(
                                popen.pid, log_dir / f"{engine.name}-r{round_no}.pyspy.txt"
                            )
                    if count >= events:
                        break
                    if popen.poll() is not None:
                        break
                    time.sleep(POLL_S)
                end = (
                    time.monotonic(),
                    tree_cpu_seconds(popen.pid),
                    cpu_seconds(redis_pid),
                    machine_busy_seconds(),
                    self_cpu_seconds(),
                )
                if first is None or count < events:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise SystemExit(f"{engine.name}: {count}/{events} jobs ran:\n{tail}")
                time.sleep(0.3)  # the last jobs' acks and records
                calls = commandstats(client)
                runs = int(client.get(COUNTER) or 0)
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    try:
                        spy.wait(30)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                stop_group(popen)
        client.close()
    calls["get"] = calls.get("get", 0) - polls  # the bench's GETs, not the worker's
    # Redis 7 names subcommands "config|resetstat": the bench's by their first word.
    worker_calls = {
        k: v for k, v in calls.items() if k.split("|")[0] not in BENCH_COMMANDS and v > 0
    }
    seconds = end[0] - first[0]
    worker_cpu, redis_cpu = end[1] - first[1], end[2] - first[2]
    busy, own = end[3] - first[3], end[4] - first[4]
    jobs = events - 1  # the window starts at the first INCR
    return {
        "engine": engine.name,
        "events": events,
        "runs": runs,
        "duplicates": runs - events,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(jobs / seconds, 1),
        "worker_cpu_ms_per_job": round(worker_cpu / jobs * 1000, 3),
        "redis_cpu_ms_per_job": round(redis_cpu / jobs * 1000, 3),
        "worker_cores": round(worker_cpu / seconds, 2),
        "redis_cores": round(redis_cpu / seconds, 2),
        # Everything else the machine did meanwhile (other users of this box, the kernel).
        "other_cores": round(max(0.0, busy - worker_cpu - redis_cpu - own) / seconds, 2),
        "commands_per_job": round(sum(worker_calls.values()) / events, 2),
        "commands": dict(sorted(worker_calls.items(), key=lambda kv: -kv[1])),
        "startup_s": round(first[0] - spawned, 2),
        "load_s": round(load_s, 1),
        "busy_cores_before": quiet,
    }


def start_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the worker (and its children) until SIGINT: collapsed stacks, no idle.

    Started at the first INCR, so start-up is not in it; summarise with
    `python bench/profile_summary.py <file>`."""
    spy = Path(sys.executable).parent / "py-spy"
    argv = [str(spy), "record", "-p", str(pid), "--subprocesses"]
    argv += ["-r", "200", "--format", "raw", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def median_row(engine: Engine, rows: list[dict[str, Any]]) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    per_round = " / ".join(f"{r['jobs_per_s']:,.0f}" for r in rows)
    dups = "/".join(str(r["duplicates"]) for r in rows)
    others = ", ".join(f"{r['other_cores']:.0%}" for r in rows)
    return (
        f"| {engine.label} | {per_round} | **{med('jobs_per_s'):,.0f}** | "
        f"{med('worker_cpu_ms_per_job'):.2f} ms | {med('redis_cpu_ms_per_job'):.3f} ms | "
        f"{med('commands_per_job'):.1f} | {dups} | {med('other_cores'):.0%} ({others}) |"
    )


def table(results: list[dict[str, Any]], names: list[str]) -> str:
    lines = [
        "| engine (settings) | jobs/s per round | median jobs/s | worker CPU per job | "
        "Redis CPU per job | Redis commands per job | extra runs | other CPU (per round) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(
        names,
        key=lambda n: -statistics.median(r["jobs_per_s"] for r in results if r["engine"] == n),
    ):
        lines.append(median_row(ENGINES[name], [r for r in results if r["engine"] == name]))
    return "\n".join(lines)


def breakdown(results: list[dict[str, Any]], name: str, top: int = 12) -> str:
    """Commands per job of `name`'s median run (by commands per job)."""
    rows = sorted((r for r in results if r["engine"] == name), key=lambda r: r["commands_per_job"])
    row = rows[len(rows) // 2]
    lines = [f"{name}: {row['commands_per_job']} commands per job (median run)"]
    for command, calls in list(row["commands"].items())[:top]:
        lines.append(f"  {command:<12} {calls / row['events']:6.2f} per job  ({calls} calls)")
    return "\n".join(lines)


def project_versions() -> str:
    names = ("arq", "redis", "hiredis", "uvloop")
    return ", ".join(f"{n}=={importlib.metadata.version(n)}" for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--engines", default=",".join(n for n in ENGINES if n != BASE), help="comma-separated"
    )
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the project's worker during its runs (collapsed stacks, in the log dir); "
        "its figures are then not comparable: py-spy takes CPU beside it",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise SystemExit(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    os.chdir(ROOT)
    print(json.dumps(machine()), flush=True)
    peers = sorted({p for n in names if (p := ENGINES[n].peer) and p != BASE})
    print("project venv:", project_versions(), flush=True)
    for peer in peers:
        print(f"{peer} venv:", venvs.versions(peer), flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="ringez-drain-peers-"))
    print("worker logs:", log_dir, flush=True)
    results: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        order = names if round_no % 2 == 0 else names[::-1]
        for name in order:
            profile = args.profile and ENGINES[name].peer in (None, BASE)
            row = run_one(ENGINES[name], args.events, log_dir, profile, round_no + 1)
            row["round"] = round_no + 1
            results.append(row)
            brief = {k: v for k, v in row.items() if k != "commands"}
            print(json.dumps(brief), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print()
    print(table(results, names))
    print()
    for name in names:
        print(breakdown(results, name))


if __name__ == "__main__":
    main()
