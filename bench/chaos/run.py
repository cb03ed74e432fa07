"""Orchestrates one chaos run: start everything, load it, break it, let it drain, count."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench.chaos import handlers as chaos_handlers
from bench.chaos.load import Load, Pacer, Script, SendDeadline, Sender, plan
from bench.chaos.procs import ROOT, Child, RedisProc
from bench.chaos.report import ChaosResult, EffectRun, explain_rerun
from ringez_worker.agents import AgentSettings
from ringez_worker.keys import Keys
from ringez_worker.sandbox import (
    REQUEST_LOG,
    FaultConfig,
    RunningSandbox,
    SandboxConfig,
    start_sandbox,
)
from ringez_worker.sandbox.redis_server import free_port
from ringez_worker.settings import load_settings
from ringez_worker.worker.metrics import worker_presence
from ringez_worker.worker.routes import build_router

SECRET = "whsec_chaos"
API_KEY = "sk_test_chaos"
KEYS = Keys()
_ACTIONS = re.compile(r"/calls/([^/]+)/actions$")


@dataclass
class ChaosConfig:
    """One chaos run; the defaults are the full run the issue asks for."""

    events: int = 10_000
    workers: int = 2
    kill_every: float = 3.0
    seed: int = 1
    rate: float = 150.0  # events sent per second (redeliveries included)
    redis_restart: bool = True
    redis_stop: str = "kill"  # kill (SIGKILL) or term (SIGTERM)
    redis_down_seconds: float = 1.0
    redis_restart_at: float = 0.5  # fraction of the events acknowledged
    # Completion-record writes refused (an ACL denies writes to rz:done:*) this long, at
    # done_fault_at of the events acknowledged: any Redis error on the dispatch path must
    # end in a retry, never a dropped job (0: off).
    done_fault_seconds: float = 2.0
    done_fault_at: float = 0.3
    # Redis full (maxmemory under what it holds, noeviction: every write refused) this long,
    # at full_redis_at of the events acknowledged: the receiver answers 503 and says so on
    # /readyz, workers wait and drain by themselves afterwards (0: off).
    full_redis_seconds: float = 2.0
    full_redis_at: float = 0.75
    rate_503: float = 0.20
    rate_429: float = 0.05
    retry_after_seconds: int = 1  # what the sandbox's 429s ask for
    fail_rate: float = 0.05  # chaos.effect's failed first tries
    slow_rate: float = 0.0  # chaos.effect's runs that outlast a lease (1.5 leases)
    duplicate_rate: float = 0.05
    burst: int = 0  # events of plain calls sent unpaced, all at once, at burst_at of the load
    burst_at: float = 0.75
    angry_every: int = 200  # one angry call per this many events
    low_balance_every: int = 500  # one low-balance session per this many events
    episodes: int = 3
    angry_hold_seconds: float = 8.0
    episode_wait_seconds: float = 45.0
    lease_seconds: float = 5.0
    job_max_tries: int = 5
    retry_backoff_seconds: float = 0.2
    retry_backoff_max_seconds: float = 2.0
    recharge_lock_seconds: float = 10.0
    chaos_tail_seconds: float = 15.0  # kills go on this long after the last event is sent
    max_seconds: float = 900.0  # the whole run, start-up to counts
    log_level: str = "WARNING"
    progress_every: float = 5.0
    run_dir: str | None = None
    keep_logs: bool = False


@dataclass
class Chaos:
    """What the chaos did and when (epoch ms), for the counts and the re-run explanations."""

    kills: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (ms, pid)
    redis_stops_ms: list[int] = dataclasses.field(default_factory=list)
    redis_down_seconds: float = 0.0
    done_fault_seconds: float = 0.0  # how long completion-record writes were refused
    full_seconds: float = 0.0  # how long Redis was full
    readyz_when_full: int | None = None  # the receiver's /readyz status while Redis was full
    refusals_ms: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # write faults
    worker_starts: int = 0
    longest_wait: float = 0.0  # a due job that no worker held
    waits: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (start, s)


def _ms() -> int:
    return int(time.time() * 1000)


class Stack:
    """The processes and the in-process sandbox of one run."""

    def __init__(self, cfg: ChaosConfig, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.say = say
        self.dir = Path(cfg.run_dir or tempfile.mkdtemp(prefix="ringez-chaos-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisProc(free_port(), self.dir / "redis-data", self.dir / "redis.log")
        self.client = Redis.from_url(self.redis.url, socket_timeout=5, socket_connect_timeout=2)
        self.sandbox: RunningSandbox | None = None
        self.receiver: Child | None = None
        self.receiver_port = free_port()
        self.workers: list[Child] = []
        self.retired: list[Child] = []
        self.chaos = Chaos()
        self._n = 0
        self.threshold = AgentSettings(_env_file=None).recharge_threshold_minutes

    # Processes.

    def base_env(self) -> dict[str, str]:
        cfg = self.cfg
        return {
            "REDIS_URL": self.redis.url,
            "RINGEZ_WEBHOOK_SECRET": SECRET,
            "HOST": "127.0.0.1",
            "LOG_LEVEL": cfg.log_level,
            "LOG_FORMAT": "json",
            "LOAD_ENTRY_POINTS": "false",
            "WORKER_METRICS_PORT": "0",
        }

    def worker_env(self) -> dict[str, str]:
        cfg = self.cfg
        assert self.sandbox is not None
        return {
            **self.base_env(),
            "RINGEZ_API_URL": self.sandbox.api_url,
            "RINGEZ_API_KEY": API_KEY,
            "RINGEZ_RATE_LIMIT": "1000000000",
            "RINGEZ_HANDLERS": "bench.chaos.handlers",
            "JOB_LEASE_SECONDS": str(cfg.lease_seconds),
            "JOB_MAX_TRIES": str(cfg.job_max_tries),
            "RETRY_BACKOFF_SECONDS": str(cfg.retry_backoff_seconds),
            "RETRY_BACKOFF_MAX_SECONDS": str(cfg.retry_backoff_max_seconds),
            "SHUTDOWN_GRACE_SECONDS": "10",
            "RECHARGE_LOCK_SECONDS": str(cfg.recharge_lock_seconds),
            "RECHARGE_DAILY_MAX_COUNT": "50",
            "RECHARGE_DAILY_MAX_AMOUNT": "100000",
            "CHAOS_FAIL_RATE": str(cfg.fail_rate),
            "CHAOS_SLOW_RATE": str(cfg.slow_rate),
            "CHAOS_SLOW_SECONDS": str(1.5 * cfg.lease_seconds),
        }

    def start_worker(self) -> Child:
        self._n += 1
        child = Child(f"worker-{self._n}", ["worker"], self.worker_env(), self.dir)
        self.workers.append(child)
        self.chaos.worker_starts += 1
        return child

    async def start(self) -> None:
        cfg = self.cfg
        await asyncio.to_thread(self.redis.start)
        self.sandbox = await start_sandbox(
            SandboxConfig(
                webhook_secret=SECRET,
                request_log_limit=10**9,
                faults=FaultConfig(
                    rate_503=cfg.rate_503,
                    rate_429=cfg.rate_429,
                    retry_after_seconds=cfg.retry_after_seconds,
                    seed=cfg.seed,
                ),
            )
        )
        self.receiver = Child(
            "receiver",
            ["serve", "--port", str(self.receiver_port)],
            {**self.base_env(), "RETRY_AFTER_SECONDS": "1"},
            self.dir,
        )
        for _ in range(cfg.workers):
            self.start_worker()
        await self._wait_ready(60.0)

    async def _wait_ready(self, seconds: float) -> None:
        """The receiver answers /readyz and every worker listens on the wake channel."""
        assert self.receiver is not None
        deadline = time.monotonic() + seconds
        url = f"http://127.0.0.1:{self.receiver_port}/readyz"
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                ready = False
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(url) as resp:
                        ready = resp.status == 200
                subscribed = dict(await self.client.pubsub_numsub(KEYS.wake)).get(
                    KEYS.wake.encode(), 0
                )
                if ready and subscribed >= len(self.workers):
                    return
                dead = [c for c in [self.receiver, *self.workers] if not c.alive()]
                if dead:
                    raise RuntimeError(f"{dead[0].name} exited at start:\n{dead[0].tail()}")
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the stack was not ready within {seconds} s; logs in {self.dir}")

    async def live_worker_pids(self) -> set[int]:
        """Pids of workers that are polling: their presence key is in Redis."""
        return {int(w["pid"]) for w in await worker_presence(self.client, KEYS)}

    # Chaos.

    async def killer(self, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.cfg.seed}:kill")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.kill_every)
                return
            try:
                polling = await self.live_worker_pids()
            except RedisError:
                continue  # Redis is restarting: try again next round
            up = [w for w in self.workers if w.alive() and w.pid in polling]
            if not up:
                continue
            victim = rng.choice(up)
            await asyncio.to_thread(victim.kill)
            self.chaos.kills.append((int((victim.killed_at or time.time()) * 1000), victim.pid))
            self.workers.remove(victim)
            self.retired.append(victim)
            self.start_worker()

    async def redis_restarter(self, sender: Sender) -> None:
        await sender.acked_at_least(int(self.cfg.redis_restart_at * self.cfg.events))
        how = signal.SIGKILL if self.cfg.redis_stop == "kill" else signal.SIGTERM
        stopped = time.monotonic()
        self.chaos.redis_stops_ms.append(_ms())
        await asyncio.to_thread(self.redis.stop, how)
        self.say(f"redis stopped ({self.cfg.redis_stop}) after {len(sender.acked)} acks")
        await asyncio.sleep(self.cfg.redis_down_seconds)
        await asyncio.to_thread(self.redis.start)
        self.chaos.redis_down_seconds = time.monotonic() - stopped
        self.say(f"redis back after {self.chaos.redis_down_seconds:.1f} s")

    async def done_write_fault(self, sender: Sender) -> None:
        """Refuse every write to completion records (rz:done:*) for a while, through ACL.

        Reads stay allowed everywhere and writes everywhere else: only the dispatcher's
        completion-record writes fail (NOPERM), the failure a review found dropping jobs.
        """
        cfg = self.cfg
        await sender.acked_at_least(int(cfg.done_fault_at * cfg.events))
        patterns = ("arq:*", "ringez:*", "chaos:*", "rz:d:*", "rz:deferrals:*", "rz:[^d]*")
        writable = [f"~{p}" for p in patterns]
        started = time.monotonic()
        await self.client.execute_command(
            "ACL", "SETUSER", "default", "resetkeys", "%R~*", *writable
        )
        self.say(f"completion-record writes refused after {len(sender.acked)} acks")
        try:
            await asyncio.sleep(cfg.done_fault_seconds)
        finally:
            await self.client.execute_command("ACL", "SETUSER", "default", "resetkeys", "~*")
        self.chaos.done_fault_seconds = time.monotonic() - started
        self.chaos.refusals_ms.append((_ms() - int(self.chaos.done_fault_seconds * 1000), _ms()))
        self.say(
            f"completion-record writes allowed again after {self.chaos.done_fault_seconds:.1f} s"
        )

    async def full_redis(self, sender: Sender) -> None:
        """Make Redis full (maxmemory below what it holds, noeviction) for a while."""
        cfg = self.cfg
        await sender.acked_at_least(int(cfg.full_redis_at * cfg.events))
        used = int((await self.client.info("memory"))["used_memory"])
        started = time.monotonic()
        await self.client.config_set("maxmemory", str(max(1 << 20, used // 2)))
        self.say(f"redis full after {len(sender.acked)} acks ({used} B held)")
        try:
            url = f"http://127.0.0.1:{self.receiver_port}/readyz"
            deadline = started + cfg.full_redis_seconds
            async with aiohttp.ClientSession() as http:
                while time.monotonic() < deadline:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with http.get(url) as resp:
                            self.chaos.readyz_when_full = resp.status
                    if self.chaos.readyz_when_full == 503:
                        break
                    await asyncio.sleep(0.2)
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            await self.client.config_set("maxmemory", "0")
        self.chaos.full_seconds = time.monotonic() - started
        self.chaos.refusals_ms.append((_ms() - int(self.chaos.full_seconds * 1000), _ms()))
        self.say(f"redis has room again after {self.chaos.full_seconds:.1f} s")

    async def monitor(self, sender: Sender, stop: asyncio.Event) -> None:
        """Progress lines, and how long due jobs waited with no worker holding them."""
        started = time.monotonic()
        last_print = started
        waiting: dict[bytes, float] = {}  # due, unleased job -> first seen so
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            now = time.monotonic()
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.hlen(chaos_handlers.RUNS)
                    pipe.zcard(KEYS.queue)
                    pipe.zrangebyscore(KEYS.queue, "-inf", _ms(), start=0, num=5000)
                    count, depth, due = await pipe.execute()
                async with self.client.pipeline(transaction=False) as pipe:
                    for job_id in due:
                        pipe.exists(b"arq:in-progress:" + job_id)
                    leased = await pipe.execute()
            except RedisError:
                continue
            unclaimed = {j for j, held in zip(due, leased, strict=True) if not held}
            for job_id in list(waiting):
                if job_id not in unclaimed:
                    wait = now - waiting.pop(job_id)
                    if wait >= 2.0:
                        self.chaos.waits.append((time.time() - wait, wait))
            for job_id in unclaimed:
                waiting.setdefault(job_id, now)
            oldest = max((now - t for t in waiting.values()), default=0.0)
            self.chaos.longest_wait = max(self.chaos.longest_wait, oldest)
            if now - last_print >= self.cfg.progress_every:
                last_print = now
                self.say(
                    f"t={now - started:6.1f}s acked={len(sender.acked)} handled={count} "
                    f"queued={depth} due={len(due)} unclaimed={len(unclaimed)} "
                    f"kills={len(self.chaos.kills)}"
                )
        now = time.monotonic()
        self.chaos.waits += [(time.time() - (now - t), now - t) for t in waiting.values()]

    async def drained(self) -> bool:
        try:
            if await self.client.zcard(KEYS.queue):
                return False
            async for _ in self.client.scan_iter(match="arq:in-progress:*", count=1000):
                return False
        except RedisError:
            return False
        return True

    async def wait_drained(self, until: float) -> bool:
        while time.monotonic() < until:
            if await self.drained():
                return True
            await asyncio.sleep(0.2)
        return await self.drained()

    async def stop_all(self) -> None:
        children = [*self.workers, *([self.receiver] if self.receiver else [])]
        await asyncio.gather(*(asyncio.to_thread(c.stop, 15.0) for c in children))
        self.retired.extend(self.workers)
        self.workers = []

    async def close(self) -> None:
        for child in [*self.workers, *([self.receiver] if self.receiver else [])]:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(child.stop, 5.0)
        with contextlib.suppress(Exception):
            await self.client.aclose()
        await asyncio.to_thread(self.redis.stop, signal.SIGTERM)
        if self.sandbox is not None:
            await self.sandbox.close()


async def run_chaos(cfg: ChaosConfig, say: Callable[[str], None] | None = None) -> ChaosResult:
    """Run the whole thing; returns the counts (`result.ok`, `result.render()`)."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.monotonic()
    end = started + cfg.max_seconds
    run = Stack(cfg, say)
    result = ChaosResult(config=dataclasses.asdict(cfg))
    tree = service_tree()
    try:
        await run.start()
        say(f"stack up: redis {run.redis.url}, receiver :{run.receiver_port}, logs in {run.dir}")
        assert run.sandbox is not None
        duration = max(1.0, (cfg.events - cfg.burst) / cfg.rate)
        scripts = plan(
            cfg.events,
            angry_every=cfg.angry_every,
            low_every=cfg.low_balance_every,
            episodes=cfg.episodes,
            duration=duration,
            seed=cfg.seed,
            burst=cfg.burst,
            burst_at=cfg.burst_at,
        )
        result = await _drive(run, cfg, scripts, started, end)
        result.service_tree = tree
    finally:
        await run.close()
        if result.ok and not cfg.keep_logs and cfg.run_dir is None:
            shutil.rmtree(run.dir, ignore_errors=True)
        else:
            result.notes.append(f"logs kept in {run.dir}")
    return result


async def _drive(
    run: Stack, cfg: ChaosConfig, scripts: list[Script], started: float, end: float
) -> ChaosResult:
    assert run.sandbox is not None
    stop_chaos, stop_monitor = asyncio.Event(), asyncio.Event()
    url = f"http://127.0.0.1:{run.receiver_port}/webhooks/ringez"
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        sender = Sender(http, url, SECRET, Pacer(cfg.rate), started + 0.75 * cfg.max_seconds)
        load = Load(
            sender,
            run.sandbox.sandbox,
            seed=cfg.seed,
            duplicate_rate=cfg.duplicate_rate,
            angry_hold_seconds=cfg.angry_hold_seconds,
            episode_wait_seconds=cfg.episode_wait_seconds,
            recharge_threshold_minutes=run.threshold,
        )
        tasks = [
            asyncio.create_task(run.killer(stop_chaos)),
            asyncio.create_task(run.monitor(sender, stop_monitor)),
        ]
        restarter = asyncio.create_task(run.redis_restarter(sender)) if cfg.redis_restart else None
        faults = []
        if cfg.done_fault_seconds:
            faults.append(asyncio.create_task(run.done_write_fault(sender)))
        if cfg.full_redis_seconds:
            faults.append(asyncio.create_task(run.full_redis(sender)))
        sent_all = True
        try:
            await load.run(scripts)
        except SendDeadline:
            sent_all = False
        say = run.say
        say(f"load sent: {len(sender.originals)} events, {len(sender.acked)} acknowledged")
        if restarter is not None:
            # The restart must have happened (and finished) before the end of the load counts.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(restarter, max(1.0, end - time.monotonic()))
            if not run.chaos.redis_down_seconds:
                run.say("the Redis restart did not happen (or did not finish)")
        if faults:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*faults, return_exceptions=True),
                    max(1.0, end - time.monotonic()),
                )
        # Kills go on while the queue drains, for at most chaos_tail_seconds.
        await run.wait_drained(min(time.monotonic() + cfg.chaos_tail_seconds, end))
        stop_chaos.set()
        quiesced = await run.wait_drained(started + 0.95 * cfg.max_seconds) and sent_all
        stop_monitor.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        say("drained" if quiesced else "NOT drained before the deadline")
        crashed = [
            f"{c.name} (pid {c.pid}) exited with {c.popen.returncode}: {c.tail(3)}"
            for c in [*run.workers, *([run.receiver] if run.receiver else [])]
            if not c.alive()
        ]
        await run.stop_all()
        result = await collect(run, cfg, sender, load)
        timeline = {
            "kills_ms_pid": run.chaos.kills,
            "redis_stops_ms": run.chaos.redis_stops_ms,
            "long_waits": run.chaos.waits,
        }
        (run.dir / "chaos.json").write_bytes(orjson.dumps(timeline))
        result.quiesced = quiesced
        result.crashed = crashed
        result.seconds = time.monotonic() - started
        return result


async def collect(run: Stack, cfg: ChaosConfig, sender: Sender, load: Load) -> ChaosResult:
    """Count what happened, from Redis, the sender's acknowledgements and the sandbox."""
    assert run.sandbox is not None
    r = ChaosResult(config=dataclasses.asdict(cfg))
    client = run.client
    stats = sender.stats
    r.events_planned = sum(load.record.planned.values())
    r.scripts = dict(load.record.sent_scripts)
    r.events_by_type = dict(Counter(sender.originals.values()))
    r.send_answers = dict(stats.answers)
    r.send_retries = stats.retries
    r.refused = dict(stats.refused)
    r.plan_collisions = stats.plan_collisions
    r.redeliveries = stats.redeliveries
    r.redelivery_answers = dict(stats.redelivery_answers)
    r.kills = len(run.chaos.kills)
    r.worker_starts = run.chaos.worker_starts
    r.redis_restarts = len(run.chaos.redis_stops_ms)
    r.redis_down_seconds = run.chaos.redis_down_seconds
    r.done_fault_seconds = run.chaos.done_fault_seconds
    r.full_seconds = run.chaos.full_seconds
    r.readyz_when_full = run.chaos.readyz_when_full
    r.longest_wait_seconds = run.chaos.longest_wait
    r.waits = _wait_texts(run.chaos)
    sb = run.sandbox.sandbox
    log = run.sandbox.app[REQUEST_LOG]
    r.api_requests = len(log)
    r.injected = dict(sb.faults.injected)

    acked = set(sender.acked)
    r.acknowledged = len(acked)
    r.accepted_twice = sum(1 for n in sender.accepted.values() if n > 1)
    runs = {k.decode(): int(v) for k, v in (await client.hgetall(chaos_handlers.RUNS)).items()}
    effects = {
        k.decode(): int(v) for k, v in (await client.hgetall(chaos_handlers.EFFECTS)).items()
    }
    failed_raw = await client.hgetall(KEYS.failed)
    failed = {k.decode(): orjson.loads(v) for k, v in failed_raw.items()}
    handled = {d for d, n in runs.items() if n >= 1}
    r.handled = len(acked & handled)
    r.lost = sorted(acked - handled)
    r.lost_in_failed_record = sum(1 for d in r.lost if d in failed)
    r.unexpected = len(handled - acked)
    r.exact_runs = Counter(runs.get(d, 0) for d in acked)
    r.exact_duplicates = [f"{d} ran {runs[d]} times" for d in sorted(acked) if runs.get(d, 0) > 1]
    r.effect_runs = Counter(effects.get(d, 0) for d in acked)

    # Re-runs of chaos.effect: explained by a crash right after the first run, or not.
    entries: dict[str, list[EffectRun]] = defaultdict(list)
    for raw in await client.lrange(chaos_handlers.LOG, 0, -1):
        delivery, pid, job_try, at_ms = raw.decode().split("|")
        entries[delivery].append(EffectRun(int(at_ms), int(pid), int(job_try)))
    killed_ms = {pid: at for at, pid in run.chaos.kills}
    for d in sorted(acked):
        if effects.get(d, 0) > 1:
            why = explain_rerun(
                entries[d], killed_ms, run.chaos.redis_stops_ms, run.chaos.refusals_ms
            )
            runs_text = ", ".join(f"pid {e.pid} try {e.job_try} @{e.at_ms}" for e in entries[d])
            if why is None:
                r.effect_duplicates_unexplained.append(f"{d[:16]}: {runs_text}")
            else:
                r.effect_duplicates_explained.append(f"{d[:16]}: {why}")

    # Every handler owed for each handled delivery has its completion record (unless failed).
    settings = load_settings(
        _env_file=None,
        ringez_api_key=API_KEY,
        ringez_handlers="bench.chaos.handlers",
        load_entry_points=False,
    )
    router = build_router(settings, agent_settings=AgentSettings(_env_file=None))
    expected = {
        event: {h.name for h in router.handlers_for(event)}
        for event in set(sender.originals.values())
    }
    ordered = sorted(acked)
    for i in range(0, len(ordered), 1000):
        chunk = ordered[i : i + 1000]
        async with client.pipeline(transaction=False) as pipe:
            for d in chunk:
                pipe.hkeys(KEYS.done(d))
            dones = await pipe.execute()
        for d, names in zip(chunk, dones, strict=True):
            if d in failed:
                continue
            owed = expected[sender.originals[d]] - {n.decode() for n in names}
            if owed:
                r.handler_successes_owed += len(owed)
                r.owed_examples.append(f"{d[:16]} {sender.originals[d]}: {sorted(owed)}")
            if chaos_handlers.EFFECT in owed:
                r.effect_missing += 1
    r.failed_record = len(failed)
    by_handler: Counter[str] = Counter()
    for d, record in failed.items():
        by_handler.update(record.get("handlers", {}).keys())
        errors = "; ".join(f"{h}: {e[:80]}" for h, e in record.get("handlers", {}).items())
        r.failed_examples.append(
            f"{d[:16]} {record.get('event')} tries={record.get('attempts')} {errors}"
        )
    r.failed_by_handler = dict(by_handler)

    _count_transfers(r, log, load, sb)
    for call_id in load.record.angry_calls:
        if not any(a["action"] == "transfer" for a in sb.state.get_call(call_id).actions):
            raw = await client.get(f"{KEYS.prefix}:call:{call_id}:escalation")
            state = orjson.loads(raw).get("state", "?") if raw else "no claim"
            r.untransferred_by_claim[state] = r.untransferred_by_claim.get(state, 0) + 1
    _count_charges(r, log, load, sb)
    return r


def service_tree() -> str:
    """The commit under test, and the service files changed on top of it (if any)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "worker", "handlers", "agents"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def _wait_texts(chaos: Chaos) -> list[str]:
    """Long waits of due jobs nobody held, grouped by the last chaos event before each."""
    events = [(at / 1000, f"SIGKILL of worker {pid}") for at, pid in chaos.kills]
    events += [(at / 1000, "Redis stop") for at in chaos.redis_stops_ms]
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for start, length in chaos.waits:
        before = [(at, what) for at, what in events if at <= start + 0.5]
        if before:
            at, what = max(before)
            groups[what].append((start - at, length))
        else:
            groups["no chaos event"].append((0.0, length))
    lines = []
    for what, waits in sorted(groups.items(), key=lambda kv: -max(w for _, w in kv[1])):
        after = min(a for a, _ in waits)
        lines.append(
            f"{len(waits)} due jobs unclaimed for up to {max(w for _, w in waits):.1f} s, "
            f"from {after:.1f} s after the {what}"
        )
    return lines


def _count_transfers(r: ChaosResult, log: list[dict[str, Any]], load: Load, sb: Any) -> None:
    transfers: Counter[str] = Counter()
    for entry in log:
        match = _ACTIONS.search(entry["path"])
        body = entry.get("json") or {}
        if (
            match
            and entry["method"] == "POST"
            and entry["status"] == 200
            and body.get("action") == "transfer"
        ):
            transfers[match.group(1)] += 1
    angry = load.record.angry_calls
    r.angry_calls = len(angry)
    r.transfers_per_call = Counter(transfers.get(c, 0) for c in angry)
    r.transfers_elsewhere = sum(n for c, n in transfers.items() if c not in angry)
    r.max_transfers = max(transfers.values(), default=0)
    for call_id in angry:
        in_state = sum(1 for a in sb.state.get_call(call_id).actions if a["action"] == "transfer")
        r.transfer_mismatch += in_state != transfers.get(call_id, 0)


def _count_charges(r: ChaosResult, log: list[dict[str, Any]], load: Load, sb: Any) -> None:
    episodes = load.record.episodes
    r.episodes = len(episodes)
    r.episodes_uncharged = sum(1 for e in episodes if not e.charged)
    starts: dict[str, list[float]] = defaultdict(list)
    for e in episodes:
        starts[e.session_id].append(e.started)
    per_episode: Counter[tuple[str, int]] = Counter()
    txs = [t for t in sb.state.transactions.values() if t.session_id in starts]
    r.transactions = len(txs)
    for tx in txs:
        index = sum(1 for s in starts[tx.session_id] if s <= tx.created_at) - 1
        if index < 0:
            r.charges_outside_episodes += 1
        else:
            per_episode[(tx.session_id, index)] += 1
    counts = [per_episode.get((e.session_id, e.number), 0) for e in episodes]
    r.charges_per_episode = Counter(counts)
    r.max_charges = max(counts, default=0)
    oks = [
        e
        for e in log
        if e["method"] == "POST" and e["path"].endswith("/add-credits") and e["status"] == 200
    ]
    r.charge_requests_ok = len(oks)
    r.charge_replays = len(oks) - r.transactions
