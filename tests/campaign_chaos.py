"""The campaign's chaos run, shared by tests/test_campaign_chaos.py (small) and
bench/campaign_chaos.py (200 contacts): worker processes SIGKILLed while they dial and
play (a new one started each time), every webhook delivered twice, a share of the
sandbox's API answers 503, optionally a Redis restart. What it checks comes from the
sandbox's own calls: every contact final, one created call per contact attempt, never
more live calls than max_concurrent, never more calls a minute than calls_per_minute."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from ringez_worker.agents.campaign import api
from ringez_worker.agents.campaign.store import FINAL
from ringez_worker.keys import Keys
from ringez_worker.sandbox import SandboxConfig, start_sandbox
from ringez_worker.sandbox.config import EmitterConfig, FaultConfig
from ringez_worker.worker.receiver import create_app
from tests.campaign_checks import (
    calls_per_attempt,
    calls_per_number,
    most_at_once,
    most_in_a_minute,
)
from tests.conftest import SECRET, make_settings
from tests.processes import Proc


@dataclass
class ChaosResult:
    contacts: int
    states: Counter[str]
    attempts: int  # attempts the campaign recorded
    calls: int  # calls the sandbox created
    most_per_attempt: int
    most_per_number: int
    most_at_once: int
    most_in_a_minute: int
    max_concurrent: int
    calls_per_minute: int
    wrong_outcome: list[str]
    live_left: int
    reserved_left: float
    kills: int
    restarts: int
    injected_503: int
    seconds: float
    alive: int = 0
    tails: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def contacts_csv(count: int, seed: int) -> tuple[str, dict[str, str]]:
    """`count` contacts in the sandbox's campaign range (about 70 % answer, 15 % busy,
    15 % never answer; various digits pressed), and the outcome each must end with."""
    rng = random.Random(seed)
    lines = ["id,phone,name"]
    expect: dict[str, str] = {}
    for i in range(count):
        roll = rng.random()
        tens = "1" if roll < 0.15 else "2" if roll < 0.30 else str(rng.randint(3, 9))
        last = ((i // 100) + i) % 9 + 1  # unique with i % 100 for up to 400 contacts
        phone = f"+1500666{i % 100:02d}{tens}{last}"
        lines.append(f"c{i},{phone},Contact {i}")
        expect[f"c{i}"] = {"1": "busy", "2": "no_answer"}.get(
            tens, "opted_out" if last == 9 else "done"
        )
    return "\n".join(lines) + "\n", expect


async def run_chaos(
    redis_url: str,
    *,
    contacts: int,
    workers: int = 3,
    kills: int = 6,
    kill_every: float = 0.5,
    max_concurrent: int = 5,
    calls_per_minute: int = 100,
    rate_503: float = 0.05,
    seed: int = 11,
    deadline_s: float = 50,
    restart_redis: Callable[[], Awaitable[None]] | None = None,
) -> ChaosResult:
    rng = random.Random(seed)
    started = time.monotonic()
    sandbox = await start_sandbox(
        SandboxConfig(
            webhook_secret=SECRET,
            pacing_seconds=0.05,
            calls_per_hour=1_000_000,  # the sandbox's per-session limit, not under test
            initial_minutes=1_000_000,
            no_answer_seconds=30,
            emitter=EmitterConfig(backoff_seconds=0.05, duplicate=True),
            faults=FaultConfig(rate_503=rate_503, seed=seed),
        )
    )
    procs: list[Proc] = []
    redis = Redis.from_url(redis_url)
    keys = Keys()
    killed = restarts = 0
    receiver = None
    try:
        settings = make_settings(redis_url)
        receiver = TestServer(create_app(settings))
        await receiver.start_server()
        sandbox.sandbox.config.receiver_url = str(receiver.make_url("/webhooks/ringez"))
        env = {
            "REDIS_URL": redis_url,
            "RINGEZ_API_URL": sandbox.api_url,
            "RINGEZ_API_KEY": "sk_test_campaigns",
            "RINGEZ_RATE_LIMIT": "1000000",
            "AGENTS_ENABLED": "campaigns",
            "CAMPAIGN_SWEEP_SECONDS": "1",
            "JOB_LEASE_SECONDS": "1",
            "WORKER_METRICS_PORT": "0",
            "RETRY_BACKOFF_SECONDS": "0.05",
            "RETRY_BACKOFF_MAX_SECONDS": "1",
        }

        def start() -> None:
            procs.append(Proc("worker", env=env))

        for _ in range(workers):
            start()
        for p in procs:
            p.wait_for_line("worker.started", deadline_s=30)
        text, expect = contacts_csv(contacts, seed)
        config = {
            "message": "Chaos campaign: press a key.",
            "max_concurrent": max_concurrent,
            "calls_per_minute": calls_per_minute,
            "retries": 1,
            "retry_after_seconds": 0.3,
            "ring_timeout": 1,
            "max_duration": 60,
            "budget": 100_000,
        }
        created = await api.create_campaign(redis, keys, text, config)
        cid = created.campaign_id
        await api.start(redis, keys, cid)

        async def finals() -> Counter[str]:
            return Counter(c.get("state", "?") for _, c in await _contacts(redis, cid))

        end = started + deadline_s
        restart_at = 2 if restart_redis is not None else -1
        while time.monotonic() < end:
            try:
                states = await finals()
            except RedisConnectionError:  # the restart, seen from here too
                states = Counter()
            if sum(states[s] for s in FINAL) == contacts:
                break
            if killed < kills:
                victim = rng.choice([p for p in procs if p.popen.poll() is None])
                victim.stop(signal.SIGKILL)
                killed += 1
                start()
                if killed == restart_at and restart_redis is not None:
                    await restart_redis()
                    restarts += 1
            # Workers exit when Redis goes away (arq); something must restart them.
            for p in [p for p in procs if p.popen.poll() is not None and p.popen.returncode != -9]:
                procs.remove(p)
                start()
            await asyncio.sleep(kill_every)  # the pace of the faults, not a synchronisation
        rows = await _contacts(redis, cid)
        status = await api.status(redis, keys, cid)
        alive = [p for p in procs if p.popen.poll() is None]
        tails = [p.output()[-3000:] for p in alive]
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)
        if receiver is not None:
            await receiver.close()
        await redis.aclose()
        await sandbox.close()

    state = sandbox.sandbox.state
    session = status["session_id"]
    per_attempt = calls_per_attempt(state, session)
    states = Counter(c.get("state", "?") for _, c in rows)
    wrong = [
        f"{cid_}: {c.get('state')} (expected {expect[cid_]})"
        for cid_, c in rows
        if c.get("state") != expect[cid_]
    ]
    result = ChaosResult(
        contacts=contacts,
        states=states,
        attempts=sum(int(c.get("attempts", 0)) for _, c in rows),
        calls=sum(per_attempt.values()),
        most_per_attempt=max(per_attempt.values(), default=0),
        most_per_number=max(calls_per_number(state, session).values(), default=0),
        most_at_once=most_at_once(state, session, state.now()),
        most_in_a_minute=most_in_a_minute(state, session),
        max_concurrent=max_concurrent,
        calls_per_minute=calls_per_minute,
        wrong_outcome=wrong,
        live_left=status["live"],
        reserved_left=status["reserved"],
        kills=killed,
        restarts=restarts,
        injected_503=sandbox.sandbox.faults.injected[503],
        seconds=time.monotonic() - started,
        alive=len(alive),
        tails=tails,
    )
    result.problems = problems(result)
    return result


async def _contacts(redis: Redis, cid: str) -> list[tuple[str, dict[str, str]]]:
    from ringez_worker.agents.campaign.store import CampaignStore

    return await CampaignStore(redis).contacts(cid)


def problems(r: ChaosResult) -> list[str]:
    found = []
    if sum(r.states[s] for s in FINAL) != r.contacts:
        found.append(f"not every contact final: {dict(r.states)}")
    if r.most_per_attempt > 1:
        found.append(f"an attempt dialed {r.most_per_attempt} times")
    if r.calls != r.attempts:
        found.append(f"{r.calls} calls created for {r.attempts} attempts")
    if r.most_per_number > 2:
        found.append(f"a number called {r.most_per_number} times (1 retry allowed)")
    if r.most_at_once > r.max_concurrent:
        found.append(f"{r.most_at_once} calls at once (max {r.max_concurrent})")
    if r.calls_per_minute and r.most_in_a_minute > r.calls_per_minute:
        found.append(f"{r.most_in_a_minute} calls in a minute (max {r.calls_per_minute})")
    if r.wrong_outcome:
        found.append(f"{len(r.wrong_outcome)} wrong outcomes: {r.wrong_outcome[:5]}")
    if r.live_left or r.reserved_left > 1e-6:
        found.append(f"slots or reservations left: live={r.live_left} reserved={r.reserved_left}")
    return found


def summary(r: ChaosResult) -> dict[str, Any]:
    return {
        k: v for k, v in r.__dict__.items() if k not in ("tails", "wrong_outcome", "states")
    } | {"states": dict(r.states)}
