"""The arq side: the job function, its start-up, and `WorkerSettings`.

`arq ringez_worker.worker.app.WorkerSettings` runs it with plain arq (polling every
`WORKER_POLL_DELAY_SECONDS`); `ringez-worker worker` runs the same settings on
`RingezWorker`, which the receiver wakes through Redis pub/sub as soon as it enqueues.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from typing import Any

import orjson
from aiohttp import web
from arq import Worker
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms
from arq.worker import func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ringez_worker.agents import AgentSettings, build_agents
from ringez_worker.agents.config import load_agent_settings
from ringez_worker.api import RingezClient
from ringez_worker.handlers.loading import load_router
from ringez_worker.handlers.router import Router
from ringez_worker.keys import Keys
from ringez_worker.logs import configure_logging, get_logger
from ringez_worker.redis_conn import arq_redis_settings, redis_from_settings
from ringez_worker.settings import Settings, load_settings
from ringez_worker.worker.dispatch import Dispatcher, backoff_seconds
from ringez_worker.worker.metrics import (
    WorkerMetrics,
    metrics_response,
    queue_stats,
    redis_readiness,
)
from ringez_worker.worker.queue import JOB_FUNCTION, dumps_job, loads_job

log = get_logger("ringez.worker")

# Longest wait between tries while Redis refuses the claim (full, read-only): short, so
# the backlog drains within seconds of memory being freed.
_REFUSED_BACKOFF_CAP_S = 5.0
# Between in-process restarts after Redis went away.
_RESTART_BACKOFF_BASE_S = 1.0
_RESTART_BACKOFF_CAP_S = 30.0


async def handle_event(
    ctx: dict[str, Any],
    delivery_id: str,
    body: str,
    received_ms: int | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """The one arq job: dispatch a delivery to its handlers."""
    dispatcher: Dispatcher = ctx["dispatcher"]
    outcome = await dispatcher.dispatch(
        delivery_id,
        body,
        job_try=ctx.get("job_try", 1),
        only=only,
        received_ms=received_ms,
        job_id=ctx.get("job_id"),
    )
    return outcome.as_dict()


def build_router(
    settings: Settings,
    extra: Router | None = None,
    *,
    agent_settings: AgentSettings | None = None,
) -> Router:
    """Built-in agents (when an API key is set), then user handlers from settings and
    entry points: all through one Router, the agents with no private path."""
    router = Router()
    if extra is not None:
        router.include(extra)
    users = load_router(settings.handler_modules, use_entry_points=settings.load_entry_points)
    config = agent_settings if agent_settings is not None else load_agent_settings()
    if settings.ringez_api_key is None:
        if config.agents_enabled.strip():
            log.warning("agents.disabled", why="RINGEZ_API_KEY is not set")
    else:
        router.include(build_agents(config, intents=users)[0])
    router.include(users)
    return router


async def start_worker_http(
    settings: Settings, redis: Any, keys: Keys, metrics: WorkerMetrics
) -> web.AppRunner | None:
    """/healthz, /readyz and /metrics on WORKER_METRICS_PORT; None when off or taken."""
    if not settings.worker_metrics_port:
        return None

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        status, body = await redis_readiness(redis, keys)
        return web.json_response(body, status=status)

    async def scrape(request: web.Request) -> web.Response:
        try:
            stats = await queue_stats(redis, keys)
        except Exception:
            stats = None  # still serve the counters while Redis is away
        if stats is not None:
            metrics.queue_depth.set(stats["depth"])
            metrics.oldest_age.set(stats["oldest_age_s"])
            metrics.failed_events.set(stats["failed"])
        return metrics_response(metrics.registry)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.worker_metrics_port).start()
    except OSError as exc:
        # Several workers on one host: the first one serves the port.
        log.warning(
            "worker.metrics_port_unavailable", port=settings.worker_metrics_port, error=str(exc)
        )
        await runner.cleanup()
        return None
    return runner


def worker_settings(
    settings: Settings,
    *,
    router: Router | None = None,
    configure_logs: bool = False,
    metrics: WorkerMetrics | None = None,
    serve_http: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker` (and so a valid arq WorkerSettings mapping).

    `serve_http=False` when the caller owns the /healthz server (`run_restarting`), so it
    outlives this worker; `metrics` then is the registry that server shows.
    """
    routes = router if router is not None else build_router(settings)
    shared_metrics = metrics

    async def on_startup(ctx: dict[str, Any]) -> None:
        if configure_logs:
            # Under the plain `arq` command, which set up its own logging after the import.
            configure_logging(settings.log_level, settings.log_format, settings.secret_values())
        keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
        metrics = shared_metrics if shared_metrics is not None else WorkerMetrics()
        ringez = (
            RingezClient.from_settings(settings, redis=ctx["redis"])
            if settings.ringez_api_key is not None
            else None
        )
        ctx["settings"] = settings
        ctx["metrics"] = metrics
        ctx["ringez"] = ringez
        ctx["dispatcher"] = Dispatcher(
            routes, settings, ctx["redis"], keys=keys, metrics=metrics, ringez=ringez
        )
        if serve_http:
            ctx["http"] = await start_worker_http(settings, ctx["redis"], keys, metrics)
        log.info(
            "worker.started",
            queue=settings.queue_name,
            handlers=[h.name for h in routes.handlers],
        )

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if ctx.get("http") is not None:
            await ctx["http"].cleanup()
        if ctx.get("ringez") is not None:
            await ctx["ringez"].aclose()
        log.info("worker.stopped")

    return {
        "functions": [func(handle_event, name=JOB_FUNCTION)],
        "redis_settings": arq_redis_settings(settings),
        "queue_name": settings.queue_name,
        "health_check_key": f"{settings.queue_name}:health-check",
        "health_check_interval": 10,
        "job_serializer": dumps_job,
        "job_deserializer": loads_job,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay_seconds,
        # Handlers are timed out by the dispatcher; arq's limit is only a backstop.
        "job_timeout": settings.job_timeout_seconds * 2 + 30,
        # Our wrapper does the counting; arq's own limit only catches crashes past it.
        "max_tries": settings.job_max_tries + 2,
        "keep_result": 0,
        "job_completion_wait": settings.shutdown_grace_seconds,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "handle_signals": True,
    }


# KEYS: the queue, the in-progress key prefix. ARGV: now ms, lease ms, how many to claim,
# how many due entries to look at at most. Running jobs stay in the queue's sorted set
# (arq removes a job when it ends), so the oldest due entries are often jobs already
# claimed, by this worker or others: skip them and look further, in pages.
_CLAIM = """
local want = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local claimed = {}
local n, offset = 0, 0
while n < want and offset < limit do
  local page = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
    'LIMIT', offset, want)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local key = KEYS[2] .. page[i]
    if redis.call('EXISTS', key) == 0 then
      redis.call('PSETEX', key, ARGV[2], '1')
      claimed[#claimed + 1] = page[i]
      claimed[#claimed + 1] = page[i + 1]
      n = n + 1
      if n == want then break end
    end
  end
  offset = offset + #page / 2
end
return claimed
"""


class RingezWorker(Worker):
    """An arq Worker that claims jobs in batches and wakes on the receiver's notice.

    arq claims each job with four sequential round trips and then sleeps `poll_delay`;
    here one Lua script claims a whole batch (same keys, same semantics: the
    in-progress key is set only if absent and the job is due), and a pub/sub message
    from the receiver, or a finished job freeing a slot, ends the wait at once.
    """

    def __init__(
        self,
        *args: Any,
        wake_channel: str,
        presence_key: str,
        idle_poll: float = 0.5,
        lease: float = 15.0,
        presence_ttl: float = 20.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._presence_key = presence_key
        self._presence_ttl_ms = int(presence_ttl * 1000)
        self._lease_ms = int(lease * 1000)
        self._lease_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._wake_channel = wake_channel
        self._idle_poll = max(idle_poll, 0.01)
        self._refill = max(1, self.max_jobs // 4)
        self._listener: asyncio.Task[None] | None = None
        self._claim_sha: str | None = None
        # How many already-claimed jobs a claim may step over: all workers' running jobs
        # sit at the head of the queue (ten workers like this one).
        self._claim_scan = max(1000, 10 * self.max_jobs)
        self._refusals = 0
        # arq's loop sleeps poll_delay between iterations; the wait happens in _poll_iteration.
        self.poll_delay_s = 0

    async def _poll_iteration(self) -> None:
        self._ensure_tasks()
        self._wake.clear()
        free = self.max_jobs - self.job_counter
        backlog = False
        try:
            if self.allow_pick_jobs and free > 0:
                # Every slot filled: more may be queued. Fewer: nothing else is due.
                backlog = await self._claim_and_start(free) == free
        except (RedisConnectionError, RedisTimeoutError):
            raise  # Redis is gone: arq exits and `ringez-worker worker` restarts it
        except RedisError as exc:
            # Redis answers but refuses (a full Redis under noeviction, READONLY after a
            # failover): wait here and try again, rather than exit and crash-loop.
            await self._back_off(exc)
            return
        self._refusals = 0
        self._reap()
        if backlog:
            # More is queued than we could take: poll again once a batch of slots is free.
            while self.max_jobs - self.job_counter < self._refill and self.allow_pick_jobs:
                await self._wait_for_wake()
                self._wake.clear()
        else:
            await self._wait_for_wake()

    def _ensure_tasks(self) -> None:
        # Heartbeat, lease renewal and the wake listener run beside the poll loop, so a
        # worker with every slot busy still reports itself alive and keeps its leases.
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())
        if self._lease_task is None or self._lease_task.done():
            self._lease_task = asyncio.create_task(self._renew_leases())
        if self._beat_task is None or self._beat_task.done():
            self._beat_task = asyncio.create_task(self._beat())

    def _reap(self) -> None:
        for job_id, task in list(self.tasks.items()):
            if not task.done():
                continue
            del self.tasks[job_id]
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, (RedisError, OSError)):
                # arq's own bookkeeping for the job failed (a refused write, a lost
                # connection): the job stays queued and claimed, so once its lease runs out
                # it runs again; the worker itself carries on.
                log.warning(
                    "worker.job_bookkeeping_failed", job_id=job_id, error=type(exc).__name__
                )
                continue
            task.result()  # surfaces other errors in run_job, as arq does

    async def _back_off(self, exc: RedisError) -> None:
        self._refusals += 1
        delay = backoff_seconds(self._refusals, self._idle_poll, _REFUSED_BACKOFF_CAP_S)
        log.warning(
            "worker.redis_refused",
            error=type(exc).__name__,
            attempt=self._refusals,
            retry_in_s=round(delay, 3),
        )
        self._reap()
        await asyncio.sleep(delay)

    async def _wait_for_wake(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the wake fires, and the worker would then never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._idle_poll):
                await self._wake.wait()

    async def _claim_and_start(self, free: int) -> int:
        """Claim up to `free` due, unclaimed jobs in one call and start them; how many."""
        # A short lease, renewed while the job runs, instead of arq's job_timeout + 10 s:
        # a killed worker's jobs are picked up by others after one lease, not minutes.
        args = [timestamp_ms(), self._lease_ms, free, free + self._claim_scan]
        keys = [self.queue_name, in_progress_key_prefix]
        if self._claim_sha is None:
            self._claim_sha = await self.pool.script_load(_CLAIM)
        try:
            claimed = await self.pool.evalsha(self._claim_sha, len(keys), *keys, *args)
        except NoScriptError:
            self._claim_sha = await self.pool.script_load(_CLAIM)
            claimed = await self.pool.evalsha(self._claim_sha, len(keys), *keys, *args)
        for i in range(0, len(claimed), 2):
            job_id = claimed[i].decode() if isinstance(claimed[i], bytes) else claimed[i]
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(float(claimed[i + 1]))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
        return len(claimed) // 2

    def handle_sig_wait_for_completion(self, signum: Any) -> None:
        # arq stops taking jobs and waits up to job_completion_wait for running ones.
        log.info("worker.stopping", signal=signal.Signals(signum).name, running=self.job_counter)
        super().handle_sig_wait_for_completion(signum)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        # arq drops a job it gave up on (tries exhausted by crashes or timeouts, expiry);
        # keep it in the failed-events record so it can be replayed.
        try:
            raw = await self.pool.get(job_key_prefix + job_id)
            dispatcher = self.ctx.get("dispatcher")
            if raw and dispatcher is not None:
                job = loads_job(raw)
                delivery_id, body = job["a"][0], job["a"][1]
                tries = int(await self.pool.get(retry_key_prefix + job_id) or 0)
                await dispatcher.abandon(
                    delivery_id, body, "worker gave up: crashed or timed out on every try", tries
                )
        except (RedisError, OSError) as exc:
            # Keep the job (its lease runs out and it is tried again) rather than drop it
            # with no record: the delete below would go through even on a full Redis.
            log.error("worker.abandon_record_failed", job_id=job_id, error=type(exc).__name__)
            return
        except Exception as exc:
            log.error("worker.abandon_record_failed", job_id=job_id, error=type(exc).__name__)
        await super().finish_failed_job(job_id, result_data)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            if not running:
                continue
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for job_id in running:
                        # PEXPIRE, not SET: a key arq already deleted must stay deleted.
                        pipe.pexpire(in_progress_key_prefix + job_id, self._lease_ms)
                    await pipe.execute()
            except Exception as exc:
                log.warning("worker.lease_renewal_failed", error=type(exc).__name__)

    async def _beat(self) -> None:
        # Every quarter of the presence TTL: a missed beat or two never lets presence lapse.
        while True:
            try:
                await self.heart_beat()
                await self._presence()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a refused or lost write; the next beat tries again
                log.debug("worker.heartbeat_failed", error=type(exc).__name__)
            await asyncio.sleep(self._presence_ttl_ms / 4000)

    async def _presence(self) -> None:
        # `ringez-worker status` counts workers by these keys; they expire with the worker.
        stats = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "running": self.job_counter,
            "complete": self.jobs_complete,
            "failed": self.jobs_failed,
            "retried": self.jobs_retried,
            "at_ms": int(time.time() * 1000),
            "every_ms": self._presence_ttl_ms // 4,
        }
        await self.pool.set(self._presence_key, orjson.dumps(stats), px=self._presence_ttl_ms)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake.set()

    async def _listen(self) -> None:
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(self._wake_channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Polling keeps jobs moving while the subscription is down.
                log.debug("worker.wake_listener_lost", error=type(exc).__name__)
                self._wake.set()
                await asyncio.sleep(1)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._pool is not None:
                await self.pool.delete(self._presence_key)
        for task in (self._listener, self._lease_task, self._beat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        # arq's close gathers the job tasks and stops at the first one that raised.
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        try:
            await super().close()
        except (RedisError, OSError):
            # Redis is gone: arq's close stopped at deleting its health key, before
            # on_shutdown and the pool; finish both so a restart leaks nothing.
            with contextlib.suppress(Exception):
                if self.on_shutdown:
                    await self.on_shutdown(self.ctx)
            with contextlib.suppress(Exception):
                await self.pool.aclose(close_connection_pool=True)
            self._pool = None


def create_worker(
    settings: Settings,
    *,
    router: Router | None = None,
    metrics: WorkerMetrics | None = None,
    serve_http: bool = True,
    **overrides: Any,
) -> RingezWorker:
    """A RingezWorker for `settings`; `overrides` go to arq.Worker (tests use `burst`)."""
    base = worker_settings(settings, router=router, metrics=metrics, serve_http=serve_http)
    kwargs = {**base, **overrides}
    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    name = f"{socket.gethostname()}:{os.getpid()}:{id(kwargs):x}"
    return RingezWorker(
        wake_channel=keys.wake,
        presence_key=keys.worker(name),
        idle_poll=settings.worker_poll_delay_seconds,
        lease=settings.job_lease_seconds,
        presence_ttl=settings.worker_presence_ttl_seconds,
        **kwargs,
    )


async def run_restarting(settings: Settings, *, router: Router | None = None) -> int:
    """Run workers one after another on this loop until a signal stops one.

    arq exits when Redis goes away; each exit starts a fresh worker after a backoff. The
    /healthz, /readyz, /metrics server and its Redis client belong to this loop, not to
    a worker, so the probes keep answering (readyz: 503) through an outage and after it.
    """
    routes = router if router is not None else build_router(settings)
    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    metrics = WorkerMetrics()
    probe_redis = redis_from_settings(settings)
    http = await start_worker_http(settings, probe_redis, keys, metrics)
    failures = 0
    try:
        while True:
            worker = create_worker(settings, router=routes, metrics=metrics, serve_http=False)
            started = time.monotonic()
            try:
                await worker.async_run()
                return 0
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this loop itself is being cancelled
                return 0  # arq's signal handler cancelled the worker: a normal stop
            except (RedisError, OSError) as exc:
                # A worker that ran a while starts the backoff over.
                failures = 1 if time.monotonic() - started > 30 else failures + 1
                delay = backoff_seconds(failures, _RESTART_BACKOFF_BASE_S, _RESTART_BACKOFF_CAP_S)
                log.warning("worker.redis_lost", error=type(exc).__name__, restart_in_s=delay)
            finally:
                await worker.close()
            if await _stopped_within(delay):
                return 0
    finally:
        if http is not None:
            await http.cleanup()
        await probe_redis.aclose()


async def _stopped_within(seconds: float) -> bool:
    """Wait `seconds`; True if SIGTERM or SIGINT came meanwhile (no worker owns them now)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return True


def __getattr__(name: str) -> Any:
    # `arq ringez_worker.worker.app.WorkerSettings` reads this; built lazily so that
    # importing the module has no side effects.
    if name == "WorkerSettings":
        return worker_settings(load_settings(), configure_logs=True)
    raise AttributeError(name)
