"""The spans themselves; imported only once tracing is on (ringez_worker/tracing.py).

Names and attributes follow the OpenTelemetry semantic conventions: HTTP server and
client spans, and the messaging spans of a queue (`create` per delivery, `send` per
group-commit batch, `process` per job run). Ours are `ringez.*`. Attributes are ids,
names, counts and codes only: never a secret, a phone number or transcript text.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ringez_worker.tracing import TRACE_CONTEXT, TRACE_LINK, TRACING, log

# W3C trace context only: the job envelope is ours, and the receiver must never take
# baggage from an unsigned header on a public port.
_PROPAGATOR = TraceContextTextMapPropagator()
MESSAGING_SYSTEM = "arq"  # the job records are arq's, on Redis
_DEFAULT_SERVICE = "ringez-agent-worker"
_instrumentors: list[Any] = []


# --- set-up -------------------------------------------------------------------------


def provider_from_env(env: Mapping[str, str]) -> TracerProvider:
    """A TracerProvider as the `OTEL_*` variables describe: resource (`OTEL_SERVICE_NAME`,
    `OTEL_RESOURCE_ATTRIBUTES`), sampler (`OTEL_TRACES_SAMPLER[_ARG]`, read by the SDK),
    exporters (`OTEL_TRACES_EXPORTER`: `otlp`, the default, and/or `console`)."""
    attributes: dict[str, str] = {}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes[SERVICE_NAME] = _DEFAULT_SERVICE
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    for name in names or ["otlp"]:
        exporter = _exporter(name or "otlp", env)
        if exporter is not None:
            provider.add_span_processor(without_orphan_redis(BatchSpanProcessor(exporter)))
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter | None:
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol.strip() == "grpc":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcExporter,
                )
            except ImportError:
                log.warning(
                    "tracing.grpc_unavailable",
                    fix="pip install opentelemetry-exporter-otlp-proto-grpc, or use http/protobuf",
                )
                return None
            return GrpcExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
    log.warning("tracing.unknown_exporter", exporter=name, known="otlp, console, none")
    return None


def set_global(provider: TracerProvider) -> None:
    """Make `provider` the process's, so user handlers' own `trace.get_tracer()` join in."""
    trace.set_tracer_provider(provider)


def instrument(provider: TracerProvider, env: Mapping[str, str]) -> None:
    """The redis and aiohttp-client instrumentations, unless listed in
    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS. The Ringez client makes its own CLIENT spans
    (one per attempt, with the retry reason) and suppresses the generic ones."""
    disabled = {n.strip() for n in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    if "redis" not in disabled:
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        _instrument(RedisInstrumentor(), provider)
    if "aiohttp-client" not in disabled and "aiohttp_client" not in disabled:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        _instrument(AioHttpClientInstrumentor(), provider)


def _instrument(instrumentor: Any, provider: TracerProvider) -> None:
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
        _instrumentors.append(instrumentor)


def uninstrument() -> None:
    while _instrumentors:
        _instrumentors.pop().uninstrument()


def without_orphan_redis(processor: SpanProcessor) -> SpanProcessor:
    """`processor`, minus the Redis spans that belong to no delivery (tests use it too)."""
    return _WithoutOrphanRedis(processor)


class _WithoutOrphanRedis(SpanProcessor):
    """Drops Redis spans that belong to no delivery: the worker polls, beats and renews
    leases many times a second, and each would be a trace of its own."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        scope = span.instrumentation_scope
        if span.parent is None and scope is not None and "redis" in scope.name:
            return
        self._inner.on_end(span)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def current_ids() -> tuple[str, str] | None:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# --- context in headers and in the job envelope --------------------------------------


def carrier(span: trace.Span | None = None) -> dict[str, str]:
    """The W3C trace context of `span` (default: the current one) as header fields."""
    ctx = trace.set_span_in_context(span) if span is not None else None
    out: dict[str, str] = {}
    _PROPAGATOR.inject(out, context=ctx)
    return out


def span_context_of(fields: Any) -> SpanContext | None:
    """The remote span context in a carrier dict; None when absent or malformed."""
    if not isinstance(fields, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
    ):
        return None
    ctx = trace.get_current_span(_PROPAGATOR.extract(fields, context=Context())).get_span_context()
    return ctx if ctx.is_valid else None


def set_attributes(**attributes: Any) -> None:
    """Attributes on the current span; None values are left out."""
    trace.get_current_span().set_attributes(
        {f"ringez.{k}": v for k, v in attributes.items() if v is not None}
    )


def delivery_attributes(delivery_id: str, event: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """What a span may say about a delivery: its id, event type, call and session ids."""
    out: dict[str, Any] = {"messaging.message.id": delivery_id, "ringez.event.type": event}
    for name in ("call_id", "session_id"):
        value = data.get(name)
        if isinstance(value, str):
            out[f"ringez.{name}"] = value
    return out


def fail(error_type: str) -> None:
    """The current span failed: ERROR with the error's type only (its text may carry
    caller data)."""
    fail_span(trace.get_current_span(), error_type)


# --- the receiver -------------------------------------------------------------------


def start_server_span(
    method: str, route: str, path: str, scheme: str, headers: Mapping[str, str], trusted: bool
) -> tuple[Span, object]:
    """The receiver's SERVER span, made current; end it with `finish`. An incoming
    `traceparent` arrives on a public, unsigned port: it is a link unless
    TRACING_TRUST_TRACEPARENT makes it the parent.

    By hand rather than `start_as_current_span`: this runs once per webhook."""
    parent: Context = Context()
    links: list[Link] = []
    if "traceparent" in headers:
        incoming = _PROPAGATOR.extract(
            {"traceparent": headers["traceparent"], "tracestate": headers.get("tracestate", "")},
            context=Context(),
        )
        remote = trace.get_current_span(incoming).get_span_context()
        if remote.is_valid:
            if trusted:
                parent = incoming
            else:
                links.append(Link(remote, {"ringez.link": "sender"}))
    span = TRACING.tracer.start_span(
        f"{method} {route}",
        context=parent,
        kind=SpanKind.SERVER,
        links=links,
        attributes={
            "http.request.method": method,
            "http.route": route,
            "url.path": path,
            "url.scheme": scheme,
        },
    )
    return span, otel_context.attach(trace.set_span_in_context(span))


def finish(span: Span, token: object) -> None:
    """End a span made current by hand."""
    otel_context.detach(token)  # type: ignore[arg-type]  # the attach's token
    span.end()


def server_status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


# --- the queue ----------------------------------------------------------------------


def start_producer_span(queue: str, delivery_id: str) -> Span:
    """The PRODUCER span of one delivery (`create`), a child of the current (SERVER) span
    and the parent of its job's runs; not made current (nothing runs under it here)."""
    return TRACING.tracer.start_span(
        f"create {queue}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "create",
            "messaging.operation.name": "create",
            "messaging.destination.name": queue,
            "messaging.message.id": delivery_id,
        },
    )


def traceparent(span: trace.Span) -> dict[str, str]:
    """`span`'s W3C trace context as header fields, formatted directly (once per webhook)."""
    ctx = span.get_span_context()
    out = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
    if ctx.trace_state:
        out["tracestate"] = ctx.trace_state.to_header()
    return out


def fail_span(span: trace.Span, error_type: str) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


def batch_span(queue: str, created: list[SpanContext]) -> Any:
    """One group-commit round trip (`send`), linking each delivery's `create` span.

    A root of its own: the batch belongs to many traces at once."""
    return TRACING.tracer.start_as_current_span(
        f"send {queue}",
        context=Context(),
        kind=SpanKind.CLIENT,
        links=[Link(ctx) for ctx in created],
        attributes={
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": queue,
            "messaging.batch.message_count": len(created),
            "db.system.name": "redis",
            "db.operation.name": "EVALSHA",
        },
        record_exception=False,
    )


# --- the worker ---------------------------------------------------------------------


def consumer_span(
    queue: str,
    delivery_id: str,
    kind: str,
    job_try: int,
    fields: Mapping[str, Any] | None,
    replay: bool,
) -> Any:
    """A job run's `process` span: a child of the producer span that links it too; for a
    replay a link to the original delivery's trace, for a task to the span that queued it."""
    fields = fields or {}
    producer = span_context_of(fields.get(TRACE_CONTEXT))
    original = span_context_of(fields.get(TRACE_LINK))
    links = []
    if producer is not None:
        links.append(Link(producer, {"ringez.link": "producer"}))
    if original is not None:
        links.append(
            Link(original, {"ringez.link": "original_delivery" if replay else "queued_by"})
        )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(producer)) if producer else Context()
    return TRACING.tracer.start_as_current_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": delivery_id,
            "ringez.job.kind": kind,
            "ringez.job.try": job_try,
            "ringez.replay": replay,
        },
        record_exception=False,
        set_status_on_exception=False,
    )


def origin(fields: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The trace context a failed-events record keeps for a later replay to link to: the
    original delivery's (a replay's own link, else its producer's), else this run's."""
    for key in (TRACE_LINK, TRACE_CONTEXT):
        value = (fields or {}).get(key)
        if span_context_of(value) is not None:
            return dict(value)  # type: ignore[arg-type]  # checked by span_context_of
    return carrier() or None


def handler_span(name: str, attempt: int) -> Any:
    return TRACING.tracer.start_as_current_span(
        f"handler {name}",
        kind=SpanKind.INTERNAL,
        attributes={"ringez.handler": name, "ringez.attempt": attempt},
        record_exception=False,
        set_status_on_exception=False,
    )


# --- the Ringez API client ----------------------------------------------------------

# Path segments that are ids (call_5a26..., sess_..., numbers): `{id}` in span names,
# which must stay few.
_ID_SEGMENT = re.compile(r"^(?=.*\d)[A-Za-z0-9_.:-]+$")


def url_template(path: str) -> str:
    return "/".join("{id}" if _ID_SEGMENT.match(s) else s for s in path.split("/"))


@contextlib.contextmanager
def client_span(method: str, url: str, path: str, attempt: int) -> Iterator[trace.Span]:
    """One HTTP attempt to the Ringez API (a CLIENT span per try, retries included);
    `path` is the API's own (after the base URL), ids in it become `{id}` in the name.

    The generic aiohttp-client instrumentation is suppressed inside: this span is it."""
    parts = urlsplit(url)
    template = url_template(path.split("?", 1)[0])
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.full": f"{parts.scheme}://{parts.netloc}{parts.path}",  # no query string
        "url.template": template,
        "server.address": parts.hostname or "",
        "ringez.attempt": attempt,
    }
    if parts.port is not None:
        attributes["server.port"] = parts.port
    if attempt > 1:
        attributes["http.request.resend_count"] = attempt - 1
    with (
        TRACING.tracer.start_as_current_span(
            f"{method} {template}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span,
        suppress_http_instrumentation(),
    ):
        try:
            yield span
        except BaseException as exc:
            # An answer over the size cap, a cancellation: nothing said why yet.
            if "error.type" not in (getattr(span, "attributes", None) or {}):
                span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def client_result(
    span: trace.Span, status: int | None, error: str | None, retry_reason: str | None
) -> None:
    """The attempt's answer: status code (None: no answer), error type, why it is retried."""
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error is not None:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))
    if retry_reason is not None:
        span.set_attribute("ringez.retry_reason", retry_reason)


def inject(headers: dict[str, str]) -> None:
    """Add the current span's `traceparent` to outgoing headers."""
    _PROPAGATOR.inject(headers, context=otel_context.get_current())
