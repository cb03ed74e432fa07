"""/healthz, /readyz and /metrics: one implementation, on the receiver's own app and on
the worker's WORKER_METRICS_PORT."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger
from ringez_worker.settings import Settings
from ringez_worker.worker.metrics import (
    WorkerMetrics,
    metrics_response,
    queue_stats,
    redis_readiness,
)

log = get_logger("ringez.worker")


def add_health_routes(
    app: web.Application,
    redis: Callable[[], Redis],
    keys: Keys,
    registry: CollectorRegistry,
    before_scrape: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Mount the three probes on `app`; `redis` returns the client to check (it may only
    exist once the app has started)."""

    async def healthz(request: web.Request) -> web.Response:
        """The process is alive and serving."""
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        """Ready for work: Redis takes writes (a full Redis answers PING too)."""
        status, body = await redis_readiness(redis(), keys)
        return web.json_response(body, status=status)

    async def scrape(request: web.Request) -> web.Response:
        if before_scrape is not None:
            await before_scrape()
        return metrics_response(registry)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", scrape)


async def start_worker_http(
    settings: Settings, redis: Redis, keys: Keys, metrics: WorkerMetrics
) -> web.AppRunner | None:
    """/healthz, /readyz and /metrics on WORKER_METRICS_PORT; None when off or taken."""
    if not settings.worker_metrics_port:
        return None

    async def refresh() -> None:
        try:
            stats = await queue_stats(redis, keys)
        except Exception:
            return  # still serve the counters while Redis is away
        metrics.queue_depth.set(stats["depth"])
        metrics.oldest_age.set(stats["oldest_age_s"])
        metrics.failed_events.set(stats["failed"])
        metrics.failed_evicted.set(stats["failed_evicted"])

    app = web.Application()
    add_health_routes(app, lambda: redis, keys, metrics.registry, refresh)
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
