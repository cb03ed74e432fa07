"""`ringez-worker worker`: workers restarted in-process when Redis goes away.

arq exits when it loses Redis; the probes must not go with it (the Kubernetes probes
point at them), so the health server and its Redis client belong to this loop.
"""

from __future__ import annotations

import asyncio
import signal
import time

from redis.exceptions import RedisError

from ringez_worker.backoff import backoff_seconds
from ringez_worker.handlers.router import Router
from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger
from ringez_worker.redis_conn import redis_from_settings
from ringez_worker.settings import Settings
from ringez_worker.worker.app import create_worker
from ringez_worker.worker.health import start_worker_http
from ringez_worker.worker.metrics import WorkerMetrics
from ringez_worker.worker.reports import report_settings
from ringez_worker.worker.routes import build_router

log = get_logger("ringez.worker")

# Between in-process restarts after Redis went away.
_RESTART_BACKOFF_BASE_S = 1.0
_RESTART_BACKOFF_CAP_S = 30.0


async def run_restarting(settings: Settings, *, router: Router | None = None) -> int:
    """Run workers one after another on this loop until a signal stops one.

    arq exits when Redis goes away; each exit starts a fresh worker after a backoff. The
    /healthz, /readyz, /metrics server and its Redis client belong to this loop, not to
    a worker, so the probes keep answering (readyz: 503) through an outage and after it.
    """
    report_settings()  # a bad REPORT_CRON is one line, before anything else logs
    metrics = WorkerMetrics()
    routes = router if router is not None else build_router(settings, registry=metrics.registry)
    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
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
