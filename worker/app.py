"""The arq side: the job function, its start-up, `WorkerSettings` and `create_worker`.

`arq ringez_worker.worker.app.WorkerSettings` runs it with plain arq (polling every
`WORKER_POLL_DELAY_SECONDS`); `ringez-worker worker` runs the same settings on
`RingezWorker`, which the receiver wakes through Redis pub/sub as soon as it enqueues.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from arq.worker import func

from ringez_worker.api import RingezClient
from ringez_worker.handlers.router import Router
from ringez_worker.jobs import JOB_FUNCTION, WEBHOOK, dumps_job, loads_job
from ringez_worker.keys import Keys
from ringez_worker.logs import configure_logging, get_logger
from ringez_worker.redis_conn import arq_redis_settings, arq_sentinel_pool
from ringez_worker.settings import Settings, load_settings
from ringez_worker.tracing import setup_from_env
from ringez_worker.worker.batch_worker import RingezWorker
from ringez_worker.worker.dispatch import Dispatcher
from ringez_worker.worker.health import start_worker_http
from ringez_worker.worker.metrics import (
    WorkerMetrics,
)
from ringez_worker.worker.reports import (
    report_router,
    report_settings,
    start_reports,
    stop_reports,
)
from ringez_worker.worker.retention import start_sweeper, stop_sweeper
from ringez_worker.worker.routes import build_router

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
    kind: str = WEBHOOK,
    trace: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one arq job function, for every kind of job (the envelope: ringez_worker/jobs.py):
    dispatch it to its handlers. `trace`: the envelope's trace fields, when it has them."""
    dispatcher: Dispatcher = ctx["dispatcher"]
    outcome = await dispatcher.dispatch(
        delivery_id,
        body,
        job_try=ctx.get("job_try", 1),
        only=only,
        received_ms=received_ms,
        job_id=ctx.get("job_id"),
        kind=kind,
        trace=trace,
    )
    return outcome.as_dict()


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
    reports = report_settings()  # a bad REPORT_CRON stops the worker here, in one line
    # One registry for this worker's whole life (arq may start it more than once), made
    # before the router so the agents' own series (quality) land on the same /metrics.
    shared_metrics = metrics if metrics is not None else WorkerMetrics()
    routes = (
        router if router is not None else build_router(settings, registry=shared_metrics.registry)
    )
    if reports.report_cron is not None:
        with_reports = Router()
        with_reports.include(routes)
        with_reports.include(report_router(settings, reports, shared_metrics))
        routes = with_reports

    async def on_startup(ctx: dict[str, Any]) -> None:
        if configure_logs:
            # Under the plain `arq` command, which set up its own logging after the import.
            setup_from_env()
            configure_logging(
                settings.log_level,
                settings.log_format,
                settings.secret_values(),
                phone_numbers=settings.log_phone_numbers,
            )
        keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
        metrics = shared_metrics
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
        for hook in routes.startup_hooks:
            try:
                await hook(ctx["redis"], settings)
            except Exception as exc:  # one agent's start-up chore must not stop the worker
                log.error(
                    "worker.startup_hook_failed",
                    hook=getattr(hook, "__qualname__", repr(hook)),
                    error=type(exc).__name__,
                    detail=str(exc),
                )
        ctx["reports"] = start_reports(settings, reports, ctx)
        ctx["sweeper"] = start_sweeper(settings, ctx["redis"], keys)
        log.info(
            "worker.started",
            queue=settings.queue_name,
            handlers=[h.name for h in routes.handlers],
        )

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await stop_reports(ctx.get("reports"))
        await stop_sweeper(ctx.get("sweeper"))
        if ctx.get("http") is not None:
            await ctx["http"].cleanup()
        if ctx.get("ringez") is not None:
            await ctx["ringez"].aclose()
        log.info("worker.stopped")

    return {
        "functions": [func(handle_event, name=JOB_FUNCTION)],
        "redis_settings": arq_redis_settings(settings),
        "redis_pool": _sentinel_pool(settings),
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


def _sentinel_pool(settings: Settings) -> Any:
    pool = arq_sentinel_pool(settings)
    if pool is not None:  # what arq's create_pool sets on the pools it makes
        pool.job_serializer, pool.job_deserializer = dumps_job, loads_job
        pool.default_queue_name = settings.queue_name
    return pool


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


def __getattr__(name: str) -> Any:
    # `arq ringez_worker.worker.app.WorkerSettings` reads this; built lazily so that
    # importing the module has no side effects.
    if name == "WorkerSettings":
        return worker_settings(load_settings(), configure_logs=True)
    raise AttributeError(name)
