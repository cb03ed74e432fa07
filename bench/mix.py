"""Drain a realistic mix through the built-in agents, the sandbox as the API (issue 21).

The same drain as `drain_peers.py`, but the jobs are what Ringez sends during real calls
and the handlers are the built-in support, escalation and recharge agents, which call
the Ringez API: here a local sandbox (`ringez_worker.sandbox`) in its own process.

- `--calls` calls, each a session and an answered call made in the sandbox before the
  run (so the agents' transfers and balance reads act on real calls): call.initiated,
  call.ringing, call.answered, transcription.updated segments, call.completed. Half are
  calm (an interim segment, the scenario's calm lines, the agent's reply), a quarter
  angry (the `angry` scenario's lines: "charged twice" is an account inquiry the
  support agent answers from the wallet with TTS, "ridiculous" makes the escalation
  agent transfer, "manager" makes support want a transfer too), a quarter ask for a
  manager politely (support and escalation both want the transfer on one delivery);
  after asking, the caller stays on for a line or two before the call ends.
- `--low` low-balance sessions (wallet 3 minutes, under the agent's 10), two balance.low
  events each (the recharge agent charges once through the sandbox wallet).
- Jobs are written as the receiver writes them (`job_bytes`, `Keys`), byte-identical for
  every engine and round (fixed ids and timestamps), due a few seconds ahead so the
  worker is up and idle; the n-th event of every call is due 1 ms after the (n-1)-th,
  so a call's events run in order, as they would arrive seconds apart.
- The clock runs from the due time to an empty queue. Worker CPU is its process tree's
  utime+stime (/proc) over that window; Redis and sandbox CPU likewise; API requests are
  the sandbox's own count. "other CPU" is the rest of the machine (the box is shared).
- Correctness, per run: every angry and manager call transferred exactly once (the
  sandbox's record of transfer actions), no calm call transferred, every low-balance
  session charged at most once (its transactions), 0 records in the failed-events hash.

The sandbox answers from memory: it has no response-latency setting of its own (its
`pacing_seconds` only spaces the events of its scenarios, which this bench does not
run). `--api-latency-ms` adds a sleep before each API answer, in this bench's sandbox
process only (default 0: the sandbox as shipped).

Engines: `ringez` (this tree, this interpreter) and `ringez-base` (BENCH_RINGEZ_BASE,
default /tmp/rz-base, with its own .venv), run as in `drain_peers.py`, interleaved
rounds with the order reversed every other round; medians. Loopback only, bounded.

    flock /tmp/bench.lock python bench/mix.py                      # 300 calls, 3 rounds
    flock /tmp/bench.lock python bench/mix.py --calls 1500 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
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
from bench.drain import wait_subscribed  # noqa: E402
from bench.drain_peers import BASE, ENGINES, Engine, base_root, commandstats, stop_group  # noqa: E402
from ringez_worker.jobs import job_bytes  # noqa: E402
from ringez_worker.keys import Keys  # noqa: E402
from ringez_worker.sandbox.config import ANSWERS  # noqa: E402
from ringez_worker.sandbox.redis_server import RedisServer  # noqa: E402
from ringez_worker.sandbox.scenarios import ANGRY_LINES, CALM_LINES  # noqa: E402
from ringez_worker.worker.cli import build_event  # noqa: E402

CALLER = "+15005550000"
API_KEY = "sk_test_bench_mix"
POLL_S = 0.005
LOW_MINUTES = 3.0
AGENT_LINE = "Thanks for calling, let me look that up for you."
MANAGER_LINES = ("Hi, I have a question about my plan.", "Could I talk to your manager, please?")
INTERIM = "Hi, I'm calling to check on the"
# After asking for someone else the caller stays on (as in the `angry` scenario): the
# call does not end right behind the segment that wants the transfer.
HOLD_LINE = "Okay, I'll stay on the line."
CONNECT_LINE = "One moment, I'm connecting you now."


# The plan: byte-identical bodies for every engine and round.


def _kind(i: int) -> str:
    return ("calm", "angry", "calm", "manager")[i % 4]


def plan(calls: int, low: int) -> dict[str, Any]:
    """Sessions and calls to make in the sandbox, and the jobs: (step, body) in order."""
    t0 = datetime(2026, 12, 3, 6, 0, tzinfo=UTC).timestamp()
    jobs: list[tuple[int, str]] = []
    spec: dict[str, Any] = {"calls": [], "low": []}

    def stamp(seconds: float) -> str:
        return (
            datetime.fromtimestamp(t0 + seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
        )

    for i in range(calls):
        kind = _kind(i)
        call_id, session_id = f"call_mix{i:06d}", f"sess_mix{i:06d}"
        spec["calls"].append({"call_id": call_id, "session_id": session_id, "kind": kind})
        base = {"call_id": call_id, "session_id": session_id}
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "call.initiated",
                {"status": "initiated", "to_number": ANSWERS, "from_number": CALLER},
            ),
            ("call.ringing", {"status": "ringing", "to_number": ANSWERS}),
            ("call.answered", {"status": "in-progress", "answered_at": stamp(i + 2)}),
        ]

        def say(
            text: str, speaker: str = "caller", final: bool = True, events: list = events
        ) -> None:
            data = {"text": text, "speaker": speaker, "is_final": final, "confidence": 0.94}
            events.append(("transcription.updated", data))

        if kind == "calm":
            say(INTERIM, final=False)
            say(CALM_LINES[0])
            say(AGENT_LINE, speaker="recipient")
            for line in CALM_LINES[1:]:
                say(line)
        elif kind == "angry":
            say(ANGRY_LINES[0])
            say(AGENT_LINE, speaker="recipient")
            for line in ANGRY_LINES[1:]:
                say(line)
            say(HOLD_LINE)
        else:
            say(MANAGER_LINES[0])
            say(AGENT_LINE, speaker="recipient")
            say(MANAGER_LINES[1])
            say(HOLD_LINE)
            say(CONNECT_LINE, speaker="recipient")
        events.append(("call.completed", {"status": "completed", "duration": 95, "cost": 0.1}))
        for step, (name, data) in enumerate(events):
            body = build_event(name, {**base, **data}, stamp(i + 2 * step))
            jobs.append((step, body.decode()))
    for j in range(low):
        session_id = f"sess_low{j:05d}"
        spec["low"].append({"session_id": session_id})
        balance = {"minutes": LOW_MINUTES, "value": LOW_MINUTES * 0.05, "currency": "USD"}
        for n, step in enumerate((2, 5)):
            data = {"session_id": session_id, "balance": balance}
            jobs.append((step, build_event("balance.low", data, stamp(j + 7 * n)).decode()))
    jobs.sort(key=lambda job: job[0])
    spec["jobs"] = jobs
    return spec


# The sandbox process (`mix.py _sandbox`): the shipped app, state made from the plan.


def serve_sandbox(plan_path: Path, port_file: Path, latency_ms: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(orjson.loads(plan_path.read_bytes()), port_file, latency_ms))


async def _serve(spec: dict[str, Any], port_file: Path, latency_ms: float) -> None:
    from aiohttp import web

    from ringez_worker.sandbox.app import create_sandbox_app
    from ringez_worker.sandbox.config import SandboxConfig
    from ringez_worker.sandbox.keys import SANDBOX

    config = SandboxConfig(webhook_secret="whsec_bench", api_keys=frozenset({API_KEY}))
    app = create_sandbox_app(config)
    sb = app[SANDBOX]
    state = sb.state
    counts: Counter[str] = Counter()

    def make_session(session_id: str, minutes: float | None) -> None:
        s = state.create_session(
            "guest",
            consent={"calling_authorized": True, "currency": "USD"},
            initial_minutes=minutes,
        )
        del state.sessions[s.session_id]
        s.session_id = session_id
        state.sessions[session_id] = s

    for c in spec["calls"]:
        make_session(c["session_id"], None)
        call, _ = state.initiate_call(c["session_id"], ANSWERS, CALLER)
        del state.calls[call.call_id]
        call.call_id = c["call_id"]
        state.calls[call.call_id] = call
        state.ring(call)
        state.answer(call)
    for s in spec["low"]:
        make_session(s["session_id"], LOW_MINUTES)

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/v1/"):
            counts[request.method + " " + _shape(request.path)] += 1
            if latency_ms > 0:
                await asyncio.sleep(latency_ms / 1000)
        return await handler(request)

    async def summary(request: web.Request) -> web.Response:
        transfers = {
            cid: sum(1 for a in c.actions if a["action"] == "transfer")
            for cid, c in state.calls.items()
        }
        charges = Counter(tx.session_id for tx in state.transactions.values())
        return web.json_response(
            {"requests": dict(counts), "transfers": transfers, "charges": dict(charges)}
        )

    app.middlewares.insert(0, count)
    app.router.add_get("/_bench/summary", summary)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_file.write_text(str(runner.addresses[0][1]))  # noqa: ASYNC240  # once, at start
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _shape(path: str) -> str:
    parts = path.removeprefix("/api/v1/").split("/")
    return "/".join("{id}" if p.startswith(("call_", "sess_")) else p for p in parts)


class _Child:
    """What `bench.drain.wait_subscribed` needs of a process: popen and output()."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.popen, self.log_path = popen, log_path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_sandbox(
    plan_path: Path, log_dir: Path, latency_ms: float
) -> tuple[subprocess.Popen[bytes], str]:
    port_file = Path(tempfile.mktemp(prefix="mix-port-", dir=log_dir))
    argv = [sys.executable, str(Path(__file__).resolve()), "_sandbox", str(plan_path)]
    argv += [str(port_file), str(latency_ms)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json"}
    log = (log_dir / "sandbox.log").open("ab")
    popen = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return popen, f"http://127.0.0.1:{port_file.read_text().strip()}"
        if popen.poll() is not None:
            break
        time.sleep(0.05)
    stop_group(popen)
    raise SystemExit(f"sandbox did not start:\n{(log_dir / 'sandbox.log').read_text()[-2000:]}")


def sandbox_summary(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url + "/_bench/summary", timeout=30) as resp:
        return json.loads(resp.read())


def worker_env(engine: Engine, redis_url: str, api_url: str) -> dict[str, str]:
    """The same settings for both versions; only the tree on PYTHONPATH differs."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT if engine.peer is None else base_root()),
        "REDIS_URL": redis_url,
        "RINGEZ_API_URL": api_url + "/api/v1",
        "RINGEZ_API_KEY": API_KEY,
        "RINGEZ_WEBHOOK_SECRET": "whsec_bench",
        # The shared API budget (standard tier: 1,000/h) would throttle a drain.
        "RINGEZ_RATE_LIMIT": "100000000",
        "AGENTS_ENABLED": "support,escalation,recharge",
        "RINGEZ_HANDLERS": "",
        "WORKER_MAX_JOBS": "100",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "WORKER_METRICS_PORT": "0",
    }


def load(client: redis.Redis, keys: Keys, jobs: list[tuple[int, str]], due_ms: int) -> None:
    """Queue the jobs as the receiver does; the n-th event of each call due n ms later."""
    received_ms = int(datetime(2026, 12, 3, 6, 0, tzinfo=UTC).timestamp() * 1000)
    pipe = client.pipeline(transaction=False)
    for i, (step, body) in enumerate(jobs):
        did = hashlib.sha256(body.encode()).hexdigest()
        pipe.psetex(keys.job(did), 3_600_000, job_bytes(did, body, received_ms))
        pipe.zadd(keys.queue, {did: due_ms + step})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def snapshot(worker: int, redis_pid: int, sandbox: int) -> tuple[float, ...]:
    return (
        time.monotonic(),
        tree_cpu_seconds(worker),
        cpu_seconds(redis_pid),
        tree_cpu_seconds(sandbox),
        machine_busy_seconds(),
        self_cpu_seconds(),
    )


def run_one(
    engine: Engine, spec: dict[str, Any], plan_path: Path, log_dir: Path, latency_ms: float
) -> dict[str, Any]:
    jobs = spec["jobs"]
    events = len(jobs)
    keys = Keys()
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        redis_pid = server.process.pid if server.process else 0
        sandbox, api_url = start_sandbox(plan_path, log_dir, latency_ms)
        log_path = log_dir / f"{engine.name}.log"
        log = log_path.open("ab")
        popen = subprocess.Popen(
            [engine.python(), "-m", "ringez_worker.worker.cli", "worker"],
            env=worker_env(engine, server.url, api_url),
            cwd=ROOT if engine.peer is None else base_root(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_subscribed(client, keys, [_Child(popen, log_path)])  # type: ignore[list-item]
            quiet = wait_quiet(deadline_s=10)
            due_ms = int((time.time() + 2.0) * 1000)
            load(client, keys, jobs, due_ms)
            client.config_resetstat()
            if time.time() * 1000 > due_ms:
                raise SystemExit("loading took longer than the 2 s lead")
            time.sleep(max(0.0, due_ms / 1000 - time.time()))
            first = snapshot(popen.pid, redis_pid, sandbox.pid)
            polls = 0
            deadline = time.monotonic() + max(120.0, events / 20)
            while time.monotonic() < deadline and popen.poll() is None:
                polls += 1
                if not client.zcard(keys.queue):
                    break
                time.sleep(POLL_S)
            end = snapshot(popen.pid, redis_pid, sandbox.pid)
            left = client.zcard(keys.queue)
            time.sleep(0.3)  # the last jobs' records
            calls = commandstats(client)
            failed = client.hlen(keys.failed)
            summary = sandbox_summary(api_url)
        finally:
            stop_group(popen)
            stop_group(sandbox)
            log.close()
        client.close()
    if left:
        raise SystemExit(f"{engine.name}: {left} jobs left:\n{log_path.read_text()[-2000:]}")
    calls["zcard"] = calls.get("zcard", 0) - polls - 1
    worker_calls = sum(v for k, v in calls.items() if k.split("|")[0] not in ("info", "config"))
    seconds = end[0] - first[0]
    worker_cpu, redis_cpu, sandbox_cpu = (end[i] - first[i] for i in (1, 2, 3))
    busy, own = end[4] - first[4], end[5] - first[5]
    # Correctness: what the sandbox saw done.
    transfers = summary["transfers"]
    wanted = {c["call_id"] for c in spec["calls"] if c["kind"] != "calm"}
    bad_transfers = sum(1 for cid, n in transfers.items() if n != (1 if cid in wanted else 0))
    charges = summary["charges"]
    low = [s["session_id"] for s in spec["low"]]
    overcharged = sum(1 for s in low if charges.get(s, 0) > 1)
    charged = sum(1 for s in low if charges.get(s, 0) == 1)
    requests = sum(summary["requests"].values())
    warnings = sum(
        1 for line in log_path.read_text(errors="replace").splitlines() if '"level"' in line
    )
    return {
        "engine": engine.name,
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds, 1),
        "worker_cpu_ms_per_event": round(worker_cpu / events * 1000, 3),
        "redis_cpu_ms_per_event": round(redis_cpu / events * 1000, 3),
        "sandbox_cpu_ms_per_event": round(sandbox_cpu / events * 1000, 3),
        "worker_cores": round(worker_cpu / seconds, 2),
        "sandbox_cores": round(sandbox_cpu / seconds, 2),
        "other_cores": round(
            max(0.0, busy - worker_cpu - redis_cpu - sandbox_cpu - own) / seconds, 2
        ),
        "api_requests_per_event": round(requests / events, 3),
        "api_requests": dict(sorted(summary["requests"].items(), key=lambda kv: -kv[1])),
        "redis_commands_per_event": round(worker_calls / events, 2),
        "redis_commands": {
            k: round(v / events, 2)
            for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:10]
            if k.split("|")[0] not in ("info", "config")
        },
        "missed": sorted(
            f"{c['call_id']}:{c['kind']}:{transfers.get(c['call_id'], 0)}"
            for c in spec["calls"]
            if transfers.get(c["call_id"], 0) != (0 if c["kind"] == "calm" else 1)
        )[:10],
        "transferred": sum(1 for cid in wanted if transfers.get(cid) == 1),
        "should_transfer": len(wanted),
        "bad_transfers": bad_transfers,
        "charged": charged,
        "low_sessions": len(low),
        "overcharged": overcharged,
        "failed": failed,
        "log_lines": warnings,
        "busy_cores_before": quiet,
    }


def ok(r: dict[str, Any]) -> bool:
    return not (r["bad_transfers"] or r["overcharged"] or r["failed"])


def table(results: list[dict[str, Any]], names: list[str]) -> str:
    lines = [
        "| worker | events/s per round | median events/s | worker CPU per event | "
        "Redis CPU per event | sandbox CPU per event | API requests per event | "
        "Redis commands per event | correct (transfers, charges, failed) | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rows = [r for r in results if r["engine"] == name]

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        per = " / ".join(f"{r['events_per_s']:,.0f}" for r in rows)
        checks = "; ".join(
            f"{r['transferred']}/{r['should_transfer']}, {r['charged']}/{r['low_sessions']}"
            f" (max 1: {'yes' if not r['overcharged'] else 'NO'}), {r['failed']}"
            for r in rows[:1]
        )
        verdict = "all rounds OK" if all(ok(r) for r in rows) else "**FAILED**"
        others = ", ".join(f"{r['other_cores']:.0%}" for r in rows)
        label = "after (7d1c1aa, this tree)" if name == "ringez" else "before (base checkout)"
        lines.append(
            f"| {label} | {per} | **{med('events_per_s'):,.0f}** | "
            f"{med('worker_cpu_ms_per_event'):.3f} ms | {med('redis_cpu_ms_per_event'):.3f} ms | "
            f"{med('sandbox_cpu_ms_per_event'):.3f} ms | {med('api_requests_per_event'):.2f} | "
            f"{med('redis_commands_per_event'):.1f} | {checks}; {verdict} | "
            f"{med('other_cores'):.0%} ({others}) |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_sandbox":
        serve_sandbox(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--low", type=int, default=None, help="low-balance sessions (calls/8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default=f"ringez,{BASE}")
    parser.add_argument("--api-latency-ms", type=float, default=0.0)
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args()
    low = args.calls // 8 if args.low is None else args.low
    if args.calls < 200:
        # With WORKER_MAX_JOBS=100 the events of one call must be more than a claim batch
        # apart, or call.completed (marking the call ended) overtakes its angry segments.
        raise SystemExit("--calls must be at least 200 (2 x WORKER_MAX_JOBS)")
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    if any(n not in ("ringez", BASE) for n in names):
        raise SystemExit("engines: ringez, ringez-base")
    if BASE in names and not (base_root() / ".venv" / "bin" / "python").exists():
        raise SystemExit(f"{base_root()} has no .venv (see bench/drain_peers.py)")
    os.chdir(ROOT)
    print(json.dumps({**machine(), "utc": datetime.now(UTC).isoformat(timespec="seconds")}))
    spec = plan(args.calls, low)
    kinds = Counter(c["kind"] for c in spec["calls"])
    print(
        f"{len(spec['jobs'])} events: {args.calls} calls ({dict(kinds)}), {low} low-balance "
        f"sessions x 2 balance.low; API latency added {args.api_latency_ms} ms",
        flush=True,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="ringez-mix-"))
    plan_path = log_dir / "plan.json"
    plan_path.write_bytes(orjson.dumps(spec))
    print("logs:", log_dir, flush=True)
    results: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        order = names if round_no % 2 == 0 else names[::-1]
        for name in order:
            row = run_one(ENGINES[name], spec, plan_path, log_dir, args.api_latency_ms)
            row["round"] = round_no + 1
            results.append(row)
            brief = {k: v for k, v in row.items() if k not in ("api_requests", "redis_commands")}
            print(json.dumps(brief), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print()
    print(table(results, names))
    for name in names:
        row = next(r for r in results if r["engine"] == name)
        print(f"{name} API requests (round {row['round']}):", row["api_requests"])
        print(f"{name} Redis commands per event (round {row['round']}):", row["redis_commands"])
    print("finished", datetime.now(UTC).isoformat(timespec="seconds"))
    if not all(ok(r) for r in results):
        raise SystemExit("a correctness check failed")


if __name__ == "__main__":
    main()
