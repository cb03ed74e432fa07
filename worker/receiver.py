"""The aiohttp app that takes Ringez webhooks in and answers only once Redis has them."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError
from structlog.typing import FilteringBoundLogger

from ringez_worker.handlers.events import EVENT_NAMES
from ringez_worker.keys import Keys
from ringez_worker.logs import HotLine, get_logger
from ringez_worker.redis_conn import redis_from_settings
from ringez_worker.settings import Settings
from ringez_worker.tracing import TRACING
from ringez_worker.worker import sansio
from ringez_worker.worker.activity import RejectCounter
from ringez_worker.worker.health import add_health_routes
from ringez_worker.worker.metrics import ReceiverMetrics
from ringez_worker.worker.queue import EventQueue

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
QUEUE = web.AppKey("queue", EventQueue)
METRICS = web.AppKey("metrics", ReceiverMetrics)
LOG = web.AppKey("log", FilteringBoundLogger)
LIMITS = web.AppKey("limits", sansio.Limits)
SECRETS = web.AppKey("secrets", tuple[bytes, ...])
REJECTS = web.AppKey("rejects", RejectCounter)
ACCEPTED = web.AppKey("accepted_line", HotLine)
DUPLICATE = web.AppKey("duplicate_line", HotLine)


def _json(status: int, payload: dict, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return _json(status, {"error": code, "message": message}, headers or None)


def _reject(
    request: web.Request, status: int, code: str, message: str, **fields: object
) -> web.Response:
    request.app[LOG].info("webhook.rejected", status=status, reason=code, **fields)
    request.app[METRICS].rejected.labels(code).inc()
    request.app[REJECTS].add(code)  # the console's fleet-wide per-minute count
    return _error(status, code, message)


async def receive_webhook(request: web.Request) -> web.Response:
    """POST handler: verify, check, durably enqueue, then answer."""
    metrics = request.app[METRICS]
    metrics.in_flight += 1
    try:
        if TRACING.on:
            return await _receive_traced(request)
        return await _receive(request)
    finally:
        metrics.in_flight -= 1


async def _receive_traced(request: web.Request) -> web.Response:
    from ringez_worker import tracing_otel

    settings = request.app[SETTINGS]
    span, token = tracing_otel.start_server_span(
        request.method,
        settings.webhook_path,
        request.path,
        request.scheme,
        request.headers,
        settings.tracing_trust_traceparent,
    )
    try:
        response = await _receive(request)
        tracing_otel.server_status(span, response.status)
        return response
    except BaseException as exc:
        tracing_otel.fail_span(span, type(exc).__name__)
        raise
    finally:
        tracing_otel.finish(span, token)


async def _receive(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    limits = request.app[LIMITS]
    # Every check is in `sansio`; here only the I/O: read the body, enqueue, answer.
    try:
        sent = sansio.check_headers(request.headers, limits)
    except sansio.Rejected as exc:
        return _reject(request, exc.status, exc.code, exc.message)
    try:
        if request.content.is_eof():
            body = await request.read()  # all of it has arrived: nothing to wait for
        else:
            # A sender that stalls mid-body must not hold a connection and a buffer forever.
            async with asyncio.timeout(settings.body_read_timeout_seconds):
                body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        rejected = sansio.too_large(limits)
        return _reject(request, rejected.status, rejected.code, rejected.message)
    except TimeoutError:
        return _reject(request, 408, "body_timeout", "the body did not arrive in time")

    # Looked up on its own line: inside the call, mypy infers the key's type from the
    # parameter (`Iterable[bytes]`) and refuses SECRETS.
    secrets = request.app[SECRETS]
    try:
        delivery = sansio.check_body(sent, body, secrets, datetime.now(UTC), limits)
    except sansio.Rejected as exc:
        if exc.delivery_id is None:
            return _reject(request, exc.status, exc.code, exc.message)
        return _reject(request, exc.status, exc.code, exc.message, delivery_id=exc.delivery_id)
    delivery_id, env = delivery.id, delivery.envelope
    if TRACING.on:
        from ringez_worker import tracing_otel

        data_ = env.payload["data"]
        span = tracing_otel.trace.get_current_span()
        span.set_attributes(tracing_otel.delivery_attributes(delivery_id, env.event, data_))

    started = time.perf_counter()
    try:
        new = await request.app[QUEUE].enqueue(
            delivery_id,
            body,
            received_ms=int(time.time() * 1000),
            event_ms=int(env.timestamp.timestamp() * 1000),
        )
    except (RedisError, OSError) as exc:
        metrics.rejected.labels("queue_unavailable").inc()
        request.app[LOG].warning(
            "webhook.redis_unavailable", delivery_id=delivery_id, error=type(exc).__name__
        )
        return _error(
            503,
            "queue_unavailable",
            "the event queue is unavailable; retry later",
            **{"Retry-After": str(settings.retry_after_seconds)},
        )

    metrics.enqueue_seconds.observe(time.perf_counter() - started)
    data = env.payload["data"]
    fields = {"delivery_id": delivery_id, "event_type": env.event, "call_id": data.get("call_id")}
    if not new:
        request.app[DUPLICATE](**fields)
        metrics.duplicates.inc()
        return _json(200, {"received": True, "duplicate": True, "id": delivery_id})
    request.app[ACCEPTED](**fields)
    # Senders choose event names: unknown ones share a label so label values stay bounded.
    metrics.count_received(env.event if env.event in EVENT_NAMES else "other")
    return _json(202, {"received": True, "id": delivery_id})


async def _method_not_allowed(request: web.Request) -> web.Response:
    return _error(405, "method_not_allowed", "use POST", Allow="POST")


def create_app(settings: Settings, redis: Redis | None = None) -> web.Application:
    """Build the receiver. Pass `redis` to share a client; otherwise one is made from settings."""
    if not settings.webhook_secrets:
        from ringez_worker.settings import SettingsError

        raise SettingsError("missing required configuration: RINGEZ_WEBHOOK_SECRET")
    # aiohttp's own limit backs up the explicit Content-Length check for chunked bodies.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[LIMITS] = sansio.Limits(
        max_body_bytes=settings.max_body_bytes,
        window_seconds=settings.dedupe_window_seconds,
        skew_seconds=settings.clock_skew_seconds,
    )
    # Split from the setting once, not on every request.
    app[SECRETS] = tuple(settings.webhook_secrets)
    app[METRICS] = ReceiverMetrics()
    app[REJECTS] = RejectCounter(Keys(prefix=settings.key_prefix, queue=settings.queue_name))
    # Bound once, with the logging configured now: a lazy proxy would rebuild the logger
    # on every call, and this one logs every webhook.
    app[LOG] = get_logger("ringez.receiver").bind()
    # The two lines written per webhook, rendered without the processor chain.
    app[ACCEPTED] = HotLine(app[LOG], "webhook.accepted")
    app[DUPLICATE] = HotLine(app[LOG], "webhook.duplicate")
    app.router.add_post(settings.webhook_path, receive_webhook)
    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    add_health_routes(app, lambda: app[REDIS], keys, app[METRICS].registry)
    app.router.add_route("*", settings.webhook_path, _method_not_allowed)
    if settings.callbacks_token is not None:
        from ringez_worker.worker.callbacks_http import add_callback_routes

        token = settings.callbacks_token.get_secret_value()
        wait = (settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
        add_callback_routes(app, lambda: app[REDIS], keys, token, "/callbacks", wait)
    app.cleanup_ctx.append(_redis_ctx(redis))
    return app


def _redis_ctx(shared: Redis | None):
    async def ctx(app: web.Application):
        settings = app[SETTINGS]
        client = shared if shared is not None else redis_from_settings(settings)
        keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
        window_ms = (settings.dedupe_window_seconds + settings.clock_skew_seconds) * 1000
        app[REDIS] = client
        app[QUEUE] = EventQueue(
            client,
            keys,
            dedupe_ttl_ms=window_ms,
            job_ttl_ms=max(window_ms, settings.handler_state_ttl_seconds * 1000),
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
            log_max_entries=settings.delivery_log_max_entries,
            log_retention_ms=settings.delivery_log_retention * 1000,
            redact_transcripts=settings.privacy_redact_transcripts,
        )
        app[REJECTS].start(client)
        yield
        await app[REJECTS].close()
        await app[QUEUE].close()
        if shared is None:
            await client.aclose()

    return ctx
