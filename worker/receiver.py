"""The aiohttp app that takes Ringez webhooks in and answers only once Redis has them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
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
REJECTS = web.AppKey("rejects", RejectCounter)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a webhook request is answered: status, JSON body and any extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def error_answer(status: int, code: str, message: str, *headers: tuple[str, str]) -> Answer:
    return Answer(status, orjson.dumps({"error": code, "message": message}), headers)


class Intake:
    """Everything one webhook goes through between its bytes and its answer, shared by the
    two ways in (the aiohttp handler below and the socket lane, `webhook_protocol.py`):
    the checks (`sansio`), the durable enqueue, the answer, its log line and metrics.

    Each way in does only its own I/O: read the headers and body, await or call back on
    `submit`'s future, write `answer`'s answer."""

    def __init__(self, settings: Settings, metrics: ReceiverMetrics, rejects: RejectCounter):
        self.limits = sansio.Limits(
            max_body_bytes=settings.max_body_bytes,
            window_seconds=settings.dedupe_window_seconds,
            skew_seconds=settings.clock_skew_seconds,
        )
        # Split from the setting once, not on every request.
        self.secrets = tuple(settings.webhook_secrets)
        self.metrics = metrics
        self.rejects = rejects
        self.retry_after = str(settings.retry_after_seconds)
        # Bound once, with the logging configured now: a lazy proxy would rebuild the
        # logger on every call, and this one logs every webhook.
        self.log: FilteringBoundLogger = get_logger("ringez.receiver").bind()
        # The two lines written per webhook, rendered without the processor chain.
        self._accepted = HotLine(self.log, "webhook.accepted")
        self._duplicate = HotLine(self.log, "webhook.duplicate")
        self.queue: EventQueue | None = None  # set once Redis is connected

    def reject(self, exc: sansio.Rejected) -> Answer:
        """Log, count and answer a refused request."""
        if exc.delivery_id is None:
            self.log.info("webhook.rejected", status=exc.status, reason=exc.code)
        else:
            self.log.info(
                "webhook.rejected", status=exc.status, reason=exc.code, delivery_id=exc.delivery_id
            )
        self.metrics.rejected.labels(exc.code).inc()
        self.rejects.add(exc.code)  # the console's fleet-wide per-minute count
        return error_answer(exc.status, exc.code, exc.message)

    def check(self, sent: str, body: bytes) -> sansio.Delivery:
        """`sansio.check_body` with this receiver's secrets, limits and clock (raises Rejected)."""
        return sansio.check_body(sent, body, self.secrets, datetime.now(UTC), self.limits)

    def submit(self, delivery: sansio.Delivery, body: bytes) -> asyncio.Future[bool]:
        """Hand the delivery to the group commit; the future says new (True) or duplicate."""
        assert self.queue is not None, "the receiver is not connected to Redis yet"
        received_ms = int(time.time() * 1000)
        event_ms = int(delivery.envelope.timestamp.timestamp() * 1000)
        if TRACING.on:
            return asyncio.ensure_future(
                self.queue.enqueue(delivery.id, body, received_ms=received_ms, event_ms=event_ms)
            )
        return self.queue.submit(delivery.id, body, received_ms, event_ms)

    def answer(
        self, delivery: sansio.Delivery, done: asyncio.Future[bool], started: float
    ) -> Answer:
        """The answer once `submit`'s future is done: 202 new, 200 duplicate, 503 when Redis
        could not confirm the write (the sender retries; nothing was acknowledged)."""
        exc = done.exception()
        if exc is not None:
            if not isinstance(exc, RedisError | OSError):
                raise exc
            self.metrics.rejected.labels("queue_unavailable").inc()
            self.log.warning(
                "webhook.redis_unavailable", delivery_id=delivery.id, error=type(exc).__name__
            )
            return error_answer(
                503,
                "queue_unavailable",
                "the event queue is unavailable; retry later",
                ("Retry-After", self.retry_after),
            )
        self.metrics.enqueue_seconds.observe(time.perf_counter() - started)
        env = delivery.envelope
        delivery_id = delivery.id
        call_id = env.payload["data"].get("call_id")
        if not done.result():
            self._duplicate(delivery_id=delivery_id, event_type=env.event, call_id=call_id)
            self.metrics.duplicates.inc()
            return Answer(
                200, b'{"received":true,"duplicate":true,"id":"%s"}' % delivery_id.encode()
            )
        self._accepted(delivery_id=delivery_id, event_type=env.event, call_id=call_id)
        # Senders choose event names: unknown ones share a label so label values stay bounded.
        self.metrics.count_received(env.event if env.event in EVENT_NAMES else "other")
        return Answer(202, b'{"received":true,"id":"%s"}' % delivery_id.encode())


INTAKE = web.AppKey("intake", Intake)


def _response(answer: Answer) -> web.Response:
    return web.Response(
        status=answer.status,
        body=answer.body,
        content_type="application/json",
        headers=dict(answer.headers) if answer.headers else None,
    )


async def receive_webhook(request: web.Request) -> web.Response:
    """POST handler: verify, check, durably enqueue, then answer."""
    intake = request.app[INTAKE]
    intake.metrics.in_flight += 1
    try:
        if TRACING.on:
            return await _receive_traced(request, intake)
        return await _receive(request, intake)
    finally:
        intake.metrics.in_flight -= 1


async def _receive_traced(request: web.Request, intake: Intake) -> web.Response:
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
        response = await _receive(request, intake)
        tracing_otel.server_status(span, response.status)
        return response
    except BaseException as exc:
        tracing_otel.fail_span(span, type(exc).__name__)
        raise
    finally:
        tracing_otel.finish(span, token)


async def _receive(request: web.Request, intake: Intake) -> web.Response:
    # Every check is in `sansio` (through `intake`); here only the I/O: read, await, answer.
    try:
        sent = sansio.check_headers(request.headers, intake.limits)
    except sansio.Rejected as exc:
        return _response(intake.reject(exc))
    try:
        if request.content.is_eof():
            body = await request.read()  # all of it has arrived: nothing to wait for
        else:
            # A sender that stalls mid-body must not hold a connection and a buffer forever.
            async with asyncio.timeout(request.app[SETTINGS].body_read_timeout_seconds):
                body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _response(intake.reject(sansio.too_large(intake.limits)))
    except TimeoutError:
        return _response(intake.reject(sansio.body_timeout()))

    try:
        delivery = intake.check(sent, body)
    except sansio.Rejected as exc:
        return _response(intake.reject(exc))
    if TRACING.on:
        from ringez_worker import tracing_otel

        env = delivery.envelope
        span = tracing_otel.trace.get_current_span()
        span.set_attributes(
            tracing_otel.delivery_attributes(delivery.id, env.event, env.payload["data"])
        )
    started = time.perf_counter()
    done = intake.submit(delivery, body)
    try:
        await done
    except (RedisError, OSError):
        pass  # answered 503 below, from the future
    return _response(intake.answer(delivery, done, started))


async def _method_not_allowed(request: web.Request) -> web.Response:
    return _response(error_answer(405, "method_not_allowed", "use POST", ("Allow", "POST")))


def create_app(settings: Settings, redis: Redis | None = None) -> web.Application:
    """Build the receiver. Pass `redis` to share a client; otherwise one is made from settings."""
    if not settings.webhook_secrets:
        from ringez_worker.settings import SettingsError

        raise SettingsError("missing required configuration: RINGEZ_WEBHOOK_SECRET")
    # aiohttp's own limit backs up the explicit Content-Length check for chunked bodies.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = ReceiverMetrics()
    app[REJECTS] = RejectCounter(Keys(prefix=settings.key_prefix, queue=settings.queue_name))
    app[INTAKE] = Intake(settings, app[METRICS], app[REJECTS])
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
        app[INTAKE].queue = app[QUEUE]
        app[REJECTS].start(client)
        yield
        await app[REJECTS].close()
        await app[QUEUE].close()
        if shared is None:
            await client.aclose()

    return ctx
