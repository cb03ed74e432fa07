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
from redis.exceptions import NoScriptError

from ringez_worker.agents import AgentSettings, build_agents
from ringez_worker.api import RingezClient
from ringez_worker.handlers.loading import load_router
from ringez_worker.handlers.router import Router
from ringez_worker.keys import Keys
from ringez_worker.logs import configure_logging, get_logger
from ringez_worker.redis_conn import arq_redis_settings
from ringez_worker.settings import Settings, load_settings
from ringez_worker.worker.dispatch import Dispatcher
from ringez_worker.worker.metrics import WorkerMetrics, metrics_response, queue_stats
from ringez_worker.worker.queue import JOB_FUNCTION, dumps_job, loads_job

log = get_logger("ringez.worker")


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
    config = agent_settings if agent_settings is not None else AgentSettings()
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
        try:
            await redis.ping()
        except Exception as exc:
            return web.json_response(
                {"status": "unavailable", "redis": type(exc).__name__}, status=503
            )
        return web.json_response({"status": "ok", "redis": "ok"})

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
    settings: Settings, *, router: Router | None = None, configure_logs: bool = False
) -> dict[str, Any]:
    """Keyword arguments for `arq.Worker` (and so a valid arq WorkerSettings mapping)."""
    routes = router if router is not None else build_router(settings)

    async def on_startup(ctx: dict[str, Any]) -> None:
        if configure_logs:
            # Under the plain `arq` command, which set up its own logging after the import.
            configure_logging(settings.log_level, settings.log_format, settings.secret_values())
        keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
        metrics = WorkerMetrics()
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


_CLAIM = """
local now = tonumber(ARGV[1])
local claimed = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = KEYS[2] .. id
  if redis.call('EXISTS', key) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('PSETEX', key, ARGV[2], '1')
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
    end
  end
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
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._presence_key = presence_key
        self._presence_at = 0.0
        self._lease_ms = int(lease * 1000)
        self._lease_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._wake_channel = wake_channel
        self._idle_poll = max(idle_poll, 0.01)
        self._refill = max(1, self.max_jobs // 4)
        self._listener: asyncio.Task[None] | None = None
        self._claim_sha: str | None = None
        # arq's loop sleeps poll_delay between iterations; the wait happens in _poll_iteration.
        self.poll_delay_s = 0

    async def _poll_iteration(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())
        if self._lease_task is None or self._lease_task.done():
            self._lease_task = asyncio.create_task(self._renew_leases())
        self._wake.clear()
        free = self.max_jobs - self.job_counter
        backlog = False
        if self.allow_pick_jobs and free > 0:
            job_ids = await self.pool.zrangebyscore(
                self.queue_name, min=float("-inf"), max=timestamp_ms(), start=0, num=free
            )
            if job_ids:
                await self._claim_and_start(job_ids)
            backlog = len(job_ids) == free
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # surfaces errors in run_job, as arq does
        await self.heart_beat()
        await self._presence()
        if backlog:
            # More is queued than we could take: poll again once a batch of slots is free.
            while self.max_jobs - self.job_counter < self._refill and self.allow_pick_jobs:
                await self._wait_for_wake()
                self._wake.clear()
        else:
            await self._wait_for_wake()

    async def _wait_for_wake(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the wake fires, and the worker would then never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._idle_poll):
                await self._wake.wait()

    async def _claim_and_start(self, job_ids: list[bytes]) -> None:
        # A short lease, renewed while the job runs, instead of arq's job_timeout + 10 s:
        # a killed worker's jobs are picked up by others after one lease, not minutes.
        args = [timestamp_ms(), self._lease_ms, *job_ids]
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

    async def _presence(self) -> None:
        # `ringez-worker status` counts workers by these keys; they expire with the worker.
        now = time.monotonic()
        if now - self._presence_at < 5:
            return
        self._presence_at = now
        stats = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "running": self.job_counter,
            "complete": self.jobs_complete,
            "failed": self.jobs_failed,
            "retried": self.jobs_retried,
            "at_ms": int(time.time() * 1000),
        }
        await self.pool.set(self._presence_key, orjson.dumps(stats), ex=20)

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
        for task in (self._listener, self._lease_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await super().close()


def create_worker(
    settings: Settings, *, router: Router | None = None, **overrides: Any
) -> RingezWorker:
    """A RingezWorker for `settings`; `overrides` go to arq.Worker (tests use `burst`)."""
    kwargs = {**worker_settings(settings, router=router), **overrides}
    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    name = f"{socket.gethostname()}:{os.getpid()}:{id(kwargs):x}"
    return RingezWorker(
        wake_channel=keys.wake,
        presence_key=keys.worker(name),
        idle_poll=settings.worker_poll_delay_seconds,
        lease=settings.job_lease_seconds,
        **kwargs,
    )


def __getattr__(name: str) -> Any:
    # `arq ringez_worker.worker.app.WorkerSettings` reads this; built lazily so that
    # importing the module has no side effects.
    if name == "WorkerSettings":
        return worker_settings(load_settings(), configure_logs=True)
    raise AttributeError(name)
