"""Tracing end to end: the real receiver, Redis and worker, the sandbox as the API, and
the SDK's in-memory exporter reading back every span."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

pytest.importorskip("opentelemetry.sdk")

import structlog
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from arq.jobs import deserialize_job_raw
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from ringez_worker import tracing, tracing_otel
from ringez_worker.handlers import Context, Event, Router
from ringez_worker.jobs import Job, loads_job
from ringez_worker.keys import Keys
from ringez_worker.logs import configure_logging, get_logger
from ringez_worker.sandbox import REQUEST_LOG, SandboxConfig, start_sandbox
from ringez_worker.sandbox.config import FaultConfig
from ringez_worker.worker import failed
from ringez_worker.worker.envelope import delivery_id as delivery_id_of
from ringez_worker.worker.receiver import create_app
from tests.conftest import (
    SECRET,
    event_body,
    make_settings,
    running_worker,
    signed_headers,
    wait_for,
)
from tests.processes import ROOT

PATH = "/webhooks/ringez"
API_KEY = "sk_test_tracing_0123456789abcdef"
PHONE = "+15005550199"
TRANSCRIPT = "please cancel my subscription, my number is " + PHONE
# A sender's span (W3C example ids): on the public port it may only be a link.
SENDER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{SENDER_TRACE}-{SENDER_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, every span kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(tracing_otel.without_orphan_redis(SimpleSpanProcessor(exporter)))
    tracing.enable(provider, env={})
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


@contextlib.asynccontextmanager
async def stack(redis_url: str, router: Router, **overrides: Any) -> AsyncIterator[Any]:
    """The sandbox as the Ringez API, the real receiver, one worker running `router`."""
    sandbox = await start_sandbox(SandboxConfig(webhook_secret=SECRET))
    settings = make_settings(
        redis_url, ringez_api_url=sandbox.api_url, ringez_api_key=API_KEY, **overrides
    )
    server = TestServer(create_app(settings))
    await server.start_server()
    try:
        async with running_worker(settings, router):
            yield settings, sandbox, str(server.make_url(PATH))
    finally:
        await server.close()
        await sandbox.close()


async def _post(url: str, body: bytes, **headers: str) -> int:
    # As a sender outside this service: no client span of ours, only the given headers.
    with suppress_http_instrumentation():
        async with (
            ClientSession() as session,
            session.post(url, data=body, headers={**signed_headers(body), **headers}) as resp,
        ):
            return resp.status


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _named(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def _scan_for_leaks(spans: list[ReadableSpan], forbidden: list[str]) -> None:
    """Every exported name, attribute, event and link attribute: none holds a secret, a
    phone number or transcript text."""
    texts: list[str] = []
    for span in spans:
        texts.append(span.name)
        texts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            texts.append(event.name)
            texts += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
        for link in span.links:
            texts += [f"{k}={v}" for k, v in (link.attributes or {}).items()]
        if span.status.description:
            texts.append(span.status.description)
    assert texts, "nothing was exported"
    for text in texts:
        for bad in forbidden:
            assert bad not in text, f"{bad!r} leaked into a span: {text!r}"


async def test_one_webhook_is_one_trace_through_receiver_queue_worker_and_api(
    spans, redis_url, redis_client
):
    runs: collections.Counter[str] = collections.Counter()
    router = Router()

    @router.on("transcription.updated")
    async def intent(event: Event, ctx: Context) -> None:
        runs["intent"] += 1
        assert ctx.client is not None
        await ctx.client.agents.detect_intent(text=event.data.text, call_id=event.call_id)  # type: ignore[attr-defined]

    @router.on("transcription.updated")
    async def flaky(event: Event, ctx: Context) -> None:
        runs["flaky"] += 1
        if runs["flaky"] == 1:
            raise RuntimeError(f"first try fails for {PHONE}")

    body = event_body("transcription.updated", text=TRANSCRIPT, caller=PHONE)
    delivery = delivery_id_of(body)
    async with stack(redis_url, router) as (settings, sandbox, url):
        # The API's first answer is a 503: the client retries, and both attempts show.
        sandbox.sandbox.faults.configure(FaultConfig(fail_next=[503]))
        assert await _post(url, body, traceparent=TRACEPARENT) == 202
        await wait_for(lambda: runs["flaky"] == 2, what="the flaky handler's second try")

        def ended() -> bool:
            return len(_named(spans.get_finished_spans(), "process ")) == 2

        await wait_for(ended, what="both job runs' spans")
        requests = [e for e in sandbox.app[REQUEST_LOG] if "intent" in e["path"]]

    finished = list(spans.get_finished_spans())
    server = _named(finished, "POST /webhooks/ringez")
    assert len(server) == 1
    server_span = server[0]
    trace_id = server_span.context.trace_id
    # The sender's traceparent is a link, not the parent: the trace starts here.
    assert server_span.kind is SpanKind.SERVER
    assert server_span.parent is None
    assert [
        (_hex(link.context.trace_id, 32), _hex(link.context.span_id, 16))
        for link in server_span.links
    ] == [(SENDER_TRACE, SENDER_SPAN)]
    assert server_span.attributes["http.response.status_code"] == 202
    assert server_span.attributes["ringez.event.type"] == "transcription.updated"
    assert server_span.attributes["ringez.call_id"] == "call_1"

    (producer,) = _named(finished, "create ")
    assert producer.kind is SpanKind.PRODUCER
    assert producer.parent.span_id == server_span.context.span_id
    assert producer.attributes["messaging.message.id"] == delivery
    assert producer.attributes["messaging.operation.type"] == "create"
    assert producer.attributes["messaging.destination.name"] == settings.queue_name

    # The group commit's round trip: its own span, linking the delivery's producer span.
    (batch,) = _named(finished, "send ")
    assert [link.context.span_id for link in batch.links] == [producer.context.span_id]
    assert batch.attributes["messaging.batch.message_count"] == 1

    process = sorted(_named(finished, "process "), key=lambda s: s.start_time)
    assert [p.attributes["ringez.job.try"] for p in process] == [1, 2]
    for run in process:
        assert run.kind is SpanKind.CONSUMER
        assert run.context.trace_id == trace_id
        assert run.parent.span_id == producer.context.span_id  # a child of the producer
        assert [link.context.span_id for link in run.links] == [producer.context.span_id]
        assert run.attributes["messaging.message.id"] == delivery
        assert run.attributes["ringez.session_id"] == "sess_1"
    assert process[0].attributes["ringez.outcome"] == "retry"
    assert process[0].attributes["ringez.retry_reason"] == "handler_failed"
    assert process[1].attributes["ringez.outcome"] == "ok"

    # The retried handler shows both attempts; the other ran once (its completion held).
    handlers = _named(finished, "handler ")
    flaky_runs = sorted(
        (
            h
            for h in handlers
            if h.attributes["ringez.handler"].endswith("flaky@transcription.updated")
        ),
        key=lambda s: s.start_time,
    )
    assert [
        (h.attributes["ringez.attempt"], h.attributes["ringez.outcome"]) for h in flaky_runs
    ] == [
        (1, "failed"),
        (2, "ok"),
    ]
    assert flaky_runs[0].status.status_code is StatusCode.ERROR
    assert flaky_runs[0].parent.span_id == process[0].context.span_id
    assert flaky_runs[1].parent.span_id == process[1].context.span_id
    (intent_run,) = [h for h in handlers if "intent@" in h.attributes["ringez.handler"]]
    assert intent_run.attributes["ringez.outcome"] == "ok"

    # One CLIENT span per API attempt, children of the handler's span, with status codes.
    client = sorted(
        (s for s in finished if s.name == "POST /agents/intent-detection"),
        key=lambda s: s.start_time,
    )
    assert [s.attributes["http.response.status_code"] for s in client] == [503, 200]
    assert [s.attributes["ringez.attempt"] for s in client] == [1, 2]
    assert client[0].attributes["ringez.retry_reason"] == "status_503"
    assert client[0].status.status_code is StatusCode.ERROR
    assert client[1].attributes["http.request.resend_count"] == 1
    assert all(s.kind is SpanKind.CLIENT for s in client)
    assert all(s.parent.span_id == intent_run.context.span_id for s in client)
    # The API saw each attempt's own span as the parent (traceparent sent along).
    sent = [e["headers"].get("traceparent", "") for e in requests]
    assert [tp.split("-")[2] for tp in sent] == [_hex(s.context.span_id, 16) for s in client]

    # The redis instrumentation's spans sit inside the trace; none stands alone.
    redis_spans = [s for s in finished if "redis" in s.instrumentation_scope.name]
    assert any(s.context.trace_id == trace_id for s in redis_spans)
    assert all(s.parent is not None for s in redis_spans)
    # Every span is this trace's but the batch's and its script load (the batch belongs
    # to every trace it carries, so it links them instead).
    others = [s for s in finished if s.context.trace_id != trace_id]
    assert {s.context.trace_id for s in others} == {batch.context.trace_id}, [
        s.name for s in others
    ]

    _scan_for_leaks(finished, [SECRET, API_KEY, PHONE, TRANSCRIPT, "cancel my subscription"])


async def test_a_trusted_traceparent_becomes_the_parent(spans, redis_url):
    settings = make_settings(redis_url, tracing_trust_traceparent=True)
    server = TestServer(create_app(settings))
    await server.start_server()
    try:
        body = event_body("call.completed", duration=3)
        assert await _post(str(server.make_url(PATH)), body, traceparent=TRACEPARENT) == 202
    finally:
        await server.close()
    (server,) = _named(list(spans.get_finished_spans()), "POST ")
    assert _hex(server.context.trace_id, 32) == SENDER_TRACE
    assert _hex(server.parent.span_id, 16) == SENDER_SPAN
    assert server.links == ()


async def test_a_replay_links_to_the_original_delivery_trace(spans, redis_url, redis_client):
    fail = {"now": True}
    router = Router()

    @router.on("call.completed")
    async def sometimes(event: Event, ctx: Context) -> None:
        if fail["now"]:
            raise ValueError("down")

    body = event_body("call.completed", duration=3)
    delivery = delivery_id_of(body)
    async with stack(redis_url, router, job_max_tries=1) as (settings, _, url):
        assert await _post(url, body) == 202

        async def recorded() -> bool:
            return await redis_client.hexists(settings.key_prefix + ":failed", delivery)

        await wait_for(recorded, what="the failed-events record")
        (producer,) = _named(list(spans.get_finished_spans()), "create ")
        record = orjson.loads(await redis_client.hget(settings.key_prefix + ":failed", delivery))
        assert record["trace"]["traceparent"].split("-")[1:3] == [
            _hex(producer.context.trace_id, 32),
            _hex(producer.context.span_id, 16),
        ]
        fail["now"] = False
        keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
        assert await failed.replay(redis_client, keys, delivery, ttl_ms=60_000)

        def replayed() -> list[ReadableSpan]:
            return [
                s
                for s in _named(list(spans.get_finished_spans()), "process ")
                if s.attributes.get("ringez.replay")
            ]

        await wait_for(lambda: bool(replayed()), what="the replay's process span")
    (replay,) = replayed()
    assert replay.context.trace_id != producer.context.trace_id  # a new trace ...
    assert [(link.context.trace_id, link.context.span_id) for link in replay.links] == [
        (producer.context.trace_id, producer.context.span_id)  # ... linking the original
    ]
    assert replay.attributes["ringez.outcome"] == "ok"
    (first,) = [
        s
        for s in _named(list(spans.get_finished_spans()), "process ")
        if not s.attributes["ringez.replay"]
    ]
    assert first.attributes["ringez.outcome"] == "gave_up"
    assert first.attributes["error.type"] == "gave_up"
    assert first.status.status_code is StatusCode.ERROR


async def test_jobs_with_and_without_trace_context_run_on_workers_with_and_without_tracing(
    redis_url, redis_client
):
    # A traced receiver's job: its trace fields sit outside arq's arguments, so an older
    # worker (plain JSON, arq's own reading) calls the job function exactly as before.
    carrier = {"traceparent": TRACEPARENT}
    record = Job("webhook", "d1", '{"event":"x","data":{}}', 1, trace_context=carrier).record(1)
    assert deserialize_job_raw(record, deserializer=orjson.loads)[1:3] == (
        ["d1", '{"event":"x","data":{}}', 1],
        {},
    )
    # This worker's deserializer hands them to the job function.
    assert deserialize_job_raw(record, deserializer=loads_job)[2] == {"trace": {"tc": carrier}}
    assert Job.from_record(record).trace_context == carrier

    # Both kinds of job, queued by hand, run on a worker with tracing off ...
    ran: list[str] = []
    router = Router()

    @router.on("call.completed")
    async def note(event: Event, ctx: Context) -> None:
        ran.append(ctx.delivery_id)

    settings = make_settings(redis_url)
    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    from ringez_worker.jobs import enqueue_job

    async def queue_both(tag: str) -> list[str]:
        ids = []
        for with_trace in (False, True):
            body = event_body("call.completed", call_id=f"{tag}{with_trace}").decode()
            job = Job(
                "webhook",
                delivery_id_of(body.encode()),
                body,
                1,
                trace_context=carrier if with_trace else None,
            )
            await enqueue_job(redis_client, keys, job, ttl_ms=60_000)
            ids.append(job.id)
        return ids

    async with running_worker(settings, router):
        expected = await queue_both("off")
        await wait_for(lambda: sorted(ran) == sorted(expected), what="both jobs, tracing off")

    # ... and on one with tracing on.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider, env={"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis,aiohttp-client"})
    try:
        ran.clear()
        async with running_worker(settings, router):
            expected = await queue_both("on")
            await wait_for(lambda: sorted(ran) == sorted(expected), what="both jobs, tracing on")
            await wait_for(
                lambda: len(_named(list(exporter.get_finished_spans()), "process ")) == 2
            )
    finally:
        tracing.disable()
    process = {
        s.attributes["messaging.message.id"]: s
        for s in exporter.get_finished_spans()
        if s.name.startswith("process ")
    }
    untraced, traced = (process[i] for i in expected)
    assert untraced.parent is None and untraced.links == ()
    assert _hex(traced.parent.span_id, 16) == SENDER_SPAN
    assert _hex(traced.context.trace_id, 32) == SENDER_TRACE


@pytest.fixture
def restore_logging():
    saved = structlog.get_config()
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:], root.level = handlers, level


def test_log_lines_carry_the_trace_and_span_ids_only_when_tracing_is_on(restore_logging):
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    get_logger("ringez.test").info("untraced")
    assert "trace_id" not in orjson.loads(stream.getvalue().splitlines()[-1])

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider, env={"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis,aiohttp-client"})
    try:
        configure_logging("INFO", "json", stream=stream)
        with tracing.TRACING.tracer.start_as_current_span("work") as span:
            get_logger("ringez.test").info("traced")
        get_logger("ringez.test").info("outside any span")
    finally:
        tracing.disable()
    traced, outside = (orjson.loads(line) for line in stream.getvalue().splitlines()[-2:])
    assert traced["trace_id"] == _hex(span.get_span_context().trace_id, 32)
    assert traced["span_id"] == _hex(span.get_span_context().span_id, 16)
    assert "trace_id" not in outside


def test_the_environment_decides_whether_tracing_is_on():
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    provider = tracing_otel.provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert provider.resource.attributes["service.name"] == "ringez-agent-worker"
    provider.shutdown()


# Without the extra: the service imports, serves and stays off, and says how to turn it on.
_WITHOUT_OTEL = """
import asyncio, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError("no " + name)
sys.meta_path.insert(0, Blocked())
from ringez_worker import tracing
from ringez_worker.worker import receiver, app, dispatch, queue  # noqa: F401
from ringez_worker.api import transport  # noqa: F401
assert not tracing.setup_from_env({"OTEL_TRACES_EXPORTER": "console"})
assert not tracing.TRACING.on
assert not [m for m in sys.modules if m.startswith("opentelemetry")]
print("off without the extra")
"""


def test_without_the_extra_tracing_stays_off_and_nothing_imports_opentelemetry():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OTEL], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "off without the extra" in done.stdout
    assert "ringez-agent-worker[otel]" in done.stdout + done.stderr


def test_with_the_extra_but_off_nothing_imports_opentelemetry():
    code = (
        "import sys\n"
        "from ringez_worker.worker import cli, receiver, app, dispatch\n"
        "from ringez_worker import tracing\n"
        "assert not tracing.setup_from_env({})\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


async def test_the_batch_span_marks_a_redis_failure(spans, redis_url):
    # Redis unreachable: the receiver answers 503 and the spans say why.
    settings = make_settings("redis://127.0.0.1:1/0", redis_timeout_seconds=0.3)
    server = TestServer(create_app(settings))
    await server.start_server()
    try:
        body = event_body("call.completed", duration=1)
        assert await _post(str(server.make_url(PATH)), body) == 503
    finally:
        await server.close()
    finished = list(spans.get_finished_spans())
    (server_span,) = _named(finished, "POST ")
    assert server_span.attributes["http.response.status_code"] == 503
    assert server_span.status.status_code is StatusCode.ERROR
    (producer,) = _named(finished, "create ")
    assert producer.status.status_code is StatusCode.ERROR


def test_dev_prints_the_spans_of_its_scenarios_with_the_console_exporter():
    from ringez_worker.sandbox.redis_server import free_port

    env = {
        "PORT": str(free_port()),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "ringez-dev-test",
        "RINGEZ_WEBHOOK_SECRET": "",
        "RINGEZ_API_KEY": "",
    }
    full_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    argv = ["dev", "--scenarios", "calm", "--exit-after-scenarios"]
    done = subprocess.run(
        [sys.executable, "-m", "ringez_worker.worker.cli", *argv],
        env={**full_env, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "calm: call" in out  # the usual summary, and the spans beside it
    assert "  tracing   on, exporter console" in out
    for name in ("POST /webhooks/ringez", "create ringez:queue", "process ringez:queue"):
        assert f'"name": "{name}"' in out, name
    assert '"name": "handler agents.support.' in out
    assert '"service.name": "ringez-dev-test"' in out
    # Log lines carry the ids of the span they were written in.
    assert "trace_id=" in out and "span_id=" in out


async def test_a_task_a_handler_queues_links_to_the_handler_span(spans, redis_url):
    from ringez_worker.jobs import schedule_task

    ran: list[str] = []
    router = Router()

    @router.on("call.answered")
    async def plan(event: Event, ctx: Context) -> None:
        keys = Keys(prefix=ctx.settings.key_prefix, queue=ctx.settings.queue_name)
        await schedule_task(ctx.redis, keys, "tracing.check", {"call_id": event.call_id})

    @router.on_task("tracing.check")
    async def check(event: Event, ctx: Context) -> None:
        ran.append(event.call_id)

    async with stack(redis_url, router) as (_, _, url):
        assert await _post(url, event_body("call.answered")) == 202
        await wait_for(lambda: ran == ["call_1"], what="the queued task")

        def task_span() -> list[ReadableSpan]:
            return [
                s
                for s in _named(list(spans.get_finished_spans()), "process ")
                if s.attributes["ringez.job.kind"] == "task"
            ]

        await wait_for(lambda: bool(task_span()), what="the task's process span")
    (planner,) = [
        s for s in _named(list(spans.get_finished_spans()), "handler ") if "plan@" in s.name
    ]
    (task,) = task_span()
    assert task.context.trace_id != planner.context.trace_id
    assert [(link.context.span_id, link.attributes["ringez.link"]) for link in task.links] == [
        (planner.context.span_id, "queued_by")
    ]
    assert task.attributes["ringez.replay"] is False
