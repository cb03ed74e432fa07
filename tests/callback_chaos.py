"""The callback queue's chaos run, shared by tests/test_callbacks_chaos.py (small) and
bench/callback_chaos.py (300 requests, 10 agents): two receivers taking requests over
HTTP, worker processes SIGKILLed while they assign and dial (a new one started each
time), every webhook delivered twice. What it checks comes from the sandbox's own calls."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from ringez_worker.sandbox import SandboxConfig, start_sandbox
from ringez_worker.sandbox.config import EmitterConfig
from ringez_worker.worker.receiver import create_app
from tests.conftest import SECRET, make_settings
from tests.processes import Proc

TOKEN = "chaos-callbacks-token-0123456789"


@dataclass
class ChaosResult:
    requests: int
    states: Counter[str]
    calls_per_request: Counter[str]  # by customer number
    tries: dict[str, int]
    over_capacity: list[tuple[str, int]]  # (agent number, live calls) above its maximum
    untransferred: int  # calls that were answered but never reached an agent
    load_left: dict[str, int]
    kills: int
    seconds: float
    alive: int = 0  # worker processes still running at the end
    tails: list[str] = field(default_factory=list)  # their last log lines, for a failure
    problems: list[str] = field(default_factory=list)


def agents_roster(count: int) -> dict[str, int]:
    """`count` agents: number -> max concurrent calls (1 or 2)."""
    return {f"+1415555{900 + i:04d}": 1 + i % 2 for i in range(count)}


async def run_chaos(
    redis_url: str,
    workdir: Path,
    *,
    requests: int,
    agents: dict[str, int],
    workers: int = 3,
    kills: int = 6,
    kill_every: float = 0.4,
    seed: int = 7,
    deadline_s: float = 150,
) -> ChaosResult:
    rng = random.Random(seed)
    started = time.monotonic()
    sandbox = await start_sandbox(
        SandboxConfig(
            webhook_secret=SECRET,
            pacing_seconds=0.05,
            talk_seconds=0.3,
            # The session's dial limit (100/h by default) is not what this run tests: past
            # it the sandbox answers 429 with an hour's Retry-After, and the 300-request
            # bench stood still there (the "stall" of the first bench run).
            calls_per_hour=100_000,
            emitter=EmitterConfig(backoff_seconds=0.05, duplicate=True),
        )
    )
    receivers: list[TestServer] = []
    procs: list[Proc] = []
    redis = Redis.from_url(redis_url)
    killed = 0
    try:
        settings = make_settings(redis_url, callbacks_token=TOKEN)
        for _ in range(2):
            server = TestServer(create_app(settings))
            await server.start_server()
            receivers.append(server)
        sandbox.sandbox.config.receiver_url = str(receivers[0].make_url("/webhooks/ringez"))
        session = sandbox.sandbox.state.create_session(initial_minutes=100_000).session_id
        roster = workdir / "roster.json"
        roster.write_bytes(
            orjson.dumps(
                [
                    {"id": f"a{i}", "number": n, "max_concurrent": m}
                    for i, (n, m) in enumerate(agents.items())
                ]
            )
        )
        env = {
            "REDIS_URL": redis_url,
            "RINGEZ_API_URL": sandbox.api_url,
            "RINGEZ_API_KEY": "sk_test_callbacks",
            "AGENTS_ENABLED": "callbacks",
            "CALLBACK_SESSION_ID": session,
            "CALLBACK_ROSTER": str(roster),
            "CALLBACK_SWEEP_SECONDS": "0.3",
            "CALLBACK_RETRY_AFTER_SECONDS": "0.2",
            "CALLBACK_DIAL_STALE_SECONDS": "3",
            "JOB_LEASE_SECONDS": "1",
            "WORKER_METRICS_PORT": "0",
            "RETRY_BACKOFF_SECONDS": "0.05",
            # Nor is the API budget (1,000/h): 1,000 requests need ~2,000 API requests.
            "RINGEZ_RATE_LIMIT": "100000",
        }

        def start() -> None:
            procs.append(Proc("worker", env=env))

        for _ in range(workers):
            start()
        for p in procs:
            p.wait_for_line("worker.started", deadline_s=30)
        ids: list[str] = []
        async with aiohttp.ClientSession() as http:
            for i in range(requests):
                body = {
                    "customer_id": f"c{i}",
                    "phone": f"+1415556{i:04d}",
                    "urgency": rng.choice(("low", "normal", "high")),
                }
                url = str(receivers[i % 2].make_url("/callbacks"))
                headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": f"k{i}"}
                for _ in range(2):  # a sender retrying: the same request, not a second
                    async with http.post(url, data=orjson.dumps(body), headers=headers) as r:
                        assert r.status == 202, await r.text()
                        rid = (await r.json())["request_id"]
                ids.append(rid)

        async def states() -> Counter[str]:
            found: Counter[str] = Counter()
            for rid in ids:
                state = await redis.hget(f"rz:callback:{rid}", "state")
                found[(state or b"gone").decode()] += 1
            return found

        end = started + deadline_s
        while (await states())["done"] < requests and time.monotonic() < end:
            if killed < kills:
                victim = rng.choice([p for p in procs if p.popen.poll() is None])
                victim.stop(signal.SIGKILL)
                killed += 1
                start()
            await asyncio.sleep(kill_every)  # the pace of the faults, not a synchronisation
        final = await states()
        tries = {}
        for rid in ids:
            tries[rid] = int(await redis.hget(f"rz:callback:{rid}", "tries") or 0)
        raw_load = await redis.hgetall("rz:callbacks:load")
        load_left = {k.decode(): int(v) for k, v in raw_load.items()}
        alive = [p for p in procs if p.popen.poll() is None]
        tails = [p.output()[-3000:] for p in alive]
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)
        for server in receivers:
            await server.close()
        await redis.aclose()
        await sandbox.close()

    calls = [c for c in sandbox.sandbox.state.calls.values() if c.session_id == session]
    result = ChaosResult(
        requests=requests,
        states=final,
        calls_per_request=Counter(c.to_number for c in calls),
        tries=tries,
        over_capacity=over_capacity(sandbox.sandbox.state, agents),
        untransferred=sum(1 for c in calls if c.answered_at is not None and not c.transferred_to),
        load_left=load_left,
        kills=killed,
        seconds=time.monotonic() - started,
        alive=len(alive),
        tails=tails,
    )
    result.problems = problems(result)
    return result


def over_capacity(state: Any, limits: dict[str, int]) -> list[tuple[str, int]]:
    """From the sandbox's own calls: each time an agent number was on more than its max."""
    events = []
    for call in state.calls.values():
        if call.transferred_to and call.answered_at is not None:
            events.append((call.answered_at, 1, call.from_number))
            events.append((call.ended_at or float("inf"), -1, call.from_number))
    live: Counter[str] = Counter()
    over = []
    for _, step, number in sorted(events, key=lambda e: (e[0], e[1])):
        live[number] += step
        if live[number] > limits.get(number, 0):
            over.append((number, live[number]))
    return over


def problems(r: ChaosResult) -> list[str]:
    found = []
    if r.states["done"] != r.requests:
        found.append(f"not every request done: {dict(r.states)}")
    created, assigned = sum(r.calls_per_request.values()), sum(r.tries.values())
    if created != assigned:
        found.append(f"{created} calls created for {assigned} assignments")
    if len(r.calls_per_request) != r.requests:
        found.append(f"{len(r.calls_per_request)} customers called of {r.requests}")
    if r.over_capacity:
        found.append(f"agents over their maximum: {r.over_capacity[:5]}")
    if r.untransferred:
        found.append(f"{r.untransferred} answered calls never reached an agent")
    if any(v != 0 for v in r.load_left.values()):
        found.append(f"slots left taken: {r.load_left}")
    return found
