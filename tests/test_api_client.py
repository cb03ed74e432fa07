"""RingezClient against a real aiohttp server on loopback that fails on purpose."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from ringez_worker.api import (
    BadRequest,
    CallSettings,
    Forbidden,
    InsufficientBalance,
    InvalidId,
    InvalidResponse,
    NotFound,
    Priority,
    RateLimited,
    RateLimitWaitExceeded,
    RedisRateLimiter,
    RetryPolicy,
    RingezClient,
    RingezError,
    RingezUnavailable,
    ServerError,
    Unauthorized,
    UserConsent,
)
from ringez_worker.api.retry import parse_retry_after
from ringez_worker.sandbox.redis_server import free_port
from ringez_worker.settings import SettingsError
from tests.conftest import make_settings

API_KEY = "sk_test_4f9c2d7e1b8a6c3f5e0d9b2a"
AGENT = "agent-under-test"
# Bodies that satisfy every response model, for endpoints a test did not script.
DEFAULT_BODY = {
    "session_id": "sess_1",
    "call_id": "call_1",
    "transaction_id": "txn_1",
    "batch_id": "batch_1",
    "webhook_id": "wh_1",
}


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # hold the request open until the test ends (a timeout)
    raw: bytes | None = None  # send these bytes instead of JSON
    echo_auth: bool = False  # put the request's Authorization header into the error body


@dataclass
class Seen:
    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


class FakeRingez:
    """A scriptable Ringez API: per (method, path) a queue of replies, the last repeating."""

    prefix = "/api/v1"

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.scripts: dict[tuple[str, str], deque[Reply]] = {}
        self.release = asyncio.Event()
        self.base_url = ""

    def script(self, method: str, path: str, *replies: Reply) -> None:
        self.scripts[(method, path)] = deque(replies)

    def requests_to(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if (s.method, s.path) == (method, path)]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", self.prefix + "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        path = request.path.removeprefix(self.prefix)
        self.seen.append(
            Seen(
                method=request.method,
                path=path,
                raw_path=request.raw_path.removeprefix(self.prefix),
                query=dict(request.query),
                headers=dict(request.headers),
                json=await request.json() if raw else None,
            )
        )
        queue = self.scripts.get((request.method, path))
        reply = (queue.popleft() if len(queue) > 1 else queue[0]) if queue else Reply()
        if reply.hang:
            await self.release.wait()
        if reply.raw is not None:
            return web.Response(body=reply.raw, status=reply.status, headers=reply.headers)
        body = reply.body if reply.body is not None else DEFAULT_BODY
        if reply.echo_auth:
            body = {"error": {"code": "bad_key", "message": request.headers["Authorization"]}}
        return web.json_response(body, status=reply.status, headers=reply.headers)


@pytest.fixture
async def api() -> AsyncIterator[FakeRingez]:
    fake = FakeRingez()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.base_url = str(server.make_url(FakeRingez.prefix))
    yield fake
    fake.release.set()
    await server.close()


def make_client(base_url: str, **overrides: Any) -> RingezClient:
    options: dict[str, Any] = {
        "timeout": 5.0,
        "max_attempts": 4,
        "backoff_base": 0.001,
        "backoff_cap": 0.01,
    }
    options.update(overrides)
    return RingezClient(base_url, API_KEY, AGENT, **options)


@pytest.fixture
async def client(api: FakeRingez) -> AsyncIterator[RingezClient]:
    async with make_client(api.base_url) as c:
        yield c


def request_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"].startswith("ringez.request")]


# Headers, bodies, parsing.


async def test_auth_headers_on_every_request(api: FakeRingez, client: RingezClient) -> None:
    await client.sessions.get("sess_1")
    await client.with_session_id("sess_9").calls.get("call_1")

    first, second = api.seen
    for seen in (first, second):
        assert seen.headers["Authorization"] == f"Bearer {API_KEY}"
        assert seen.headers["X-Agent-ID"] == AGENT
    assert "X-Session-ID" not in first.headers
    assert second.headers["X-Session-ID"] == "sess_9"


async def test_client_session_id_header(api: FakeRingez) -> None:
    async with make_client(api.base_url, session_id="sess_42") as c:
        await c.analytics.spending()
    assert api.seen[0].headers["X-Session-ID"] == "sess_42"


async def test_session_create_body_and_parsed_response(api: FakeRingez, client: RingezClient):
    api.script(
        "POST",
        "/sessions/create",
        Reply(
            body={
                "session_id": "sess_abc",
                "session_token": "tok",
                "expires_at": "2030-01-01T00:00:00Z",
                "wallet_balance": {"minutes": 30, "currency": "USD", "value": 3.0},
                "rate_limits": {"calls_per_hour": 60, "max_call_duration": 3600},
                "brand_new_field": {"nested": True},
            }
        ),
    )
    session = await client.sessions.create(
        session_type="authenticated",
        agent_context={"purpose": "support"},
        user_consent=UserConsent(calling_authorized=True, privacy_mode=True),
    )
    assert api.seen[0].json == {
        "session_type": "authenticated",
        "agent_context": {"purpose": "support"},
        "user_consent": {"calling_authorized": True, "privacy_mode": True},
    }
    assert session.id == session.session_id == "sess_abc"
    assert session.wallet_balance is not None and session.wallet_balance.minutes == 30
    assert session.rate_limits is not None and session.rate_limits.calls_per_hour == 60
    # Fields the contract does not list are kept, not rejected.
    assert session.model_extra == {"brand_new_field": {"nested": True}}


async def test_transfer_is_an_action_with_parameters(api: FakeRingez, client: RingezClient):
    api.script(
        "POST",
        "/calls/call_7/actions",
        Reply(body={"call_id": "call_7", "action": "transfer", "status": "executed"}),
    )
    result = await client.calls.transfer(
        "call_7", "+14155559999", transfer_note="needs billing", reason="customer_escalation"
    )
    await client.calls.transfer("call_7", transfer_to="+14155550000")

    assert [s.json for s in api.seen] == [
        {
            "action": "transfer",
            "parameters": {
                "transfer_to": "+14155559999",
                "transfer_note": "needs billing",
                "reason": "customer_escalation",
            },
        },
        {"action": "transfer", "parameters": {"transfer_to": "+14155550000"}},
    ]
    assert result.status == "executed"


Call = Callable[[RingezClient], Awaitable[Any]]

ENDPOINTS: list[tuple[str, Call, str, str, dict[str, str], Any]] = [
    ("sessions.get", lambda c: c.sessions.get("s1"), "GET", "/sessions/s1", {}, None),
    ("sessions.delete", lambda c: c.sessions.delete("s1"), "DELETE", "/sessions/s1", {}, None),
    (
        "wallet.balance",
        lambda c: c.wallet.balance("s1"),
        "GET",
        "/wallet/balance",
        {"session_id": "s1"},
        None,
    ),
    ("calls.get", lambda c: c.calls.get("c1"), "GET", "/calls/c1", {}, None),
    (
        "calls.dtmf",
        lambda c: c.calls.dtmf("c1", "12#"),
        "POST",
        "/calls/c1/actions",
        {},
        {"action": "dtmf", "parameters": {"digits": "12#"}},
    ),
    (
        "calls.hold",
        lambda c: c.calls.hold("c1"),
        "POST",
        "/calls/c1/actions",
        {},
        {"action": "hold"},
    ),
    (
        "calls.unhold",
        lambda c: c.calls.unhold("c1"),
        "POST",
        "/calls/c1/actions",
        {},
        {"action": "unhold"},
    ),
    ("calls.hangup", lambda c: c.calls.hangup("c1"), "DELETE", "/calls/c1", {}, None),
    (
        "calls.history",
        lambda c: c.calls.history("s1", limit=20, offset=40, status="completed"),
        "GET",
        "/calls/history",
        {"session_id": "s1", "limit": "20", "offset": "40", "status": "completed"},
        None,
    ),
    (
        "calls.transcribe",
        lambda c: c.calls.transcribe("c1", language="en-US", speaker_labels=True),
        "POST",
        "/calls/c1/transcribe",
        {},
        {"language": "en-US", "speaker_labels": True},
    ),
    ("transcripts.get", lambda c: c.transcripts.get("c1"), "GET", "/transcripts/c1", {}, None),
    (
        "agents.detect_intent",
        lambda c: c.agents.detect_intent(
            text="I want a refund", call_id="c1", context={"previous_intents": []}
        ),
        "POST",
        "/agents/intent-detection",
        {},
        {
            "call_id": "c1",
            "transcript_segment": "I want a refund",
            "context": {"previous_intents": []},
        },
    ),
    (
        "agents.route_call",
        lambda c: c.agents.route_call(
            caller_info={"phone_number": "+14155551234"},
            routing_criteria={"department": "billing", "priority": "high"},
        ),
        "POST",
        "/agents/call-routing",
        {},
        {
            "caller_info": {"phone_number": "+14155551234"},
            "routing_criteria": {"department": "billing", "priority": "high"},
        },
    ),
    (
        "agents.analyze_sentiment",
        lambda c: c.agents.analyze_sentiment("c1", text="this is terrible"),
        "POST",
        "/agents/sentiment-analysis",
        {},
        {
            "call_id": "c1",
            "transcript_segment": "this is terrible",
            "include_recommendations": True,
        },
    ),
    (
        "agents.synthesize_voice",
        lambda c: c.agents.synthesize_voice("Hello", voice="en-US-Neural2-A"),
        "POST",
        "/agents/voice-synthesis",
        {},
        {"text": "Hello", "voice": "en-US-Neural2-A"},
    ),
    (
        "analytics.call_metrics",
        lambda c: c.analytics.call_metrics(
            session_id="s1", start_date="2024-01-01T00:00:00Z", group_by="hour"
        ),
        "GET",
        "/analytics/call-metrics",
        {"session_id": "s1", "start_date": "2024-01-01T00:00:00Z", "group_by": "hour"},
        None,
    ),
    (
        "analytics.spending",
        lambda c: c.analytics.spending(),
        "GET",
        "/analytics/spending",
        {},
        None,
    ),
    (
        "webhooks.subscribe",
        lambda c: c.webhooks.subscribe(
            session_id="s1",
            webhook_url="https://example.test/hook",
            events=["call.completed"],
            secret="whsec_x",
        ),
        "POST",
        "/webhooks/subscribe",
        {},
        {
            "session_id": "s1",
            "webhook_url": "https://example.test/hook",
            "events": ["call.completed"],
            "secret": "whsec_x",
        },
    ),
]


@pytest.mark.parametrize(
    ("call", "method", "path", "query", "body"),
    [e[1:] for e in ENDPOINTS],
    ids=[e[0] for e in ENDPOINTS],
)
async def test_endpoint_shapes(
    api: FakeRingez,
    client: RingezClient,
    call: Call,
    method: str,
    path: str,
    query: dict[str, str],
    body: Any,
) -> None:
    await call(client)
    [seen] = api.seen
    assert (seen.method, seen.path, seen.query, seen.json) == (method, path, query, body)


@pytest.mark.parametrize("bad", ["..", ".", "...", "", "../sessions/x", "a/b", "a%2Fb", "a b", "é"])
async def test_ids_that_are_not_one_plain_segment_are_refused_before_any_request(
    api: FakeRingez, client: RingezClient, bad: str
):
    # `..` as a call id used to send GET /api/v1/ (and /calls/../actions, POST /actions).
    for call in (
        client.transcripts.get(bad),
        client.calls.get(bad),
        client.calls.transfer(bad, transfer_to="+15005550006"),
        client.sessions.get(bad),
    ):
        with pytest.raises(InvalidId) as info:
            await call
        assert info.value.retryable is False
    assert api.seen == []


async def test_a_plain_id_is_sent_as_it_is(api: FakeRingez, client: RingezClient):
    await client.calls.get("call_5a26.75-e~f")
    [seen] = api.seen
    assert seen.raw_path == "/calls/call_5a26.75-e~f"


async def test_sentiment_needs_exactly_one_text(client: RingezClient) -> None:
    with pytest.raises(TypeError):
        await client.agents.analyze_sentiment("c1")
    with pytest.raises(TypeError):
        await client.agents.analyze_sentiment("c1", "a", text="b")


# Idempotency keys.


CREATES: list[tuple[str, Callable[..., Awaitable[Any]], str]] = [
    (
        "calls.initiate",
        lambda c, **kw: c.calls.initiate(
            session_id="s1",
            to_number="+15005550006",
            from_number="+12025551000",
            call_settings=CallSettings(transcribe=True, max_duration=600),
            metadata={"contact_id": 7},
            **kw,
        ),
        "/calls/initiate",
    ),
    (
        "wallet.add_credits",
        lambda c, **kw: c.wallet.add_credits(
            session_id="s1", payment_method="stripe", plan="starter", amount=5.0, **kw
        ),
        "/wallet/add-credits",
    ),
    (
        "batch.calls",
        lambda c, **kw: c.batch.calls(
            session_id="s1",
            calls=[{"to_number": "+15005550006", "metadata": {"contact_id": 1}}],
            call_settings={"max_duration": 300},
            **kw,
        ),
        "/batch/calls",
    ),
]


@pytest.mark.parametrize(("create", "path"), [c[1:] for c in CREATES], ids=[c[0] for c in CREATES])
async def test_idempotency_key_reused_across_retries_not_across_calls(
    api: FakeRingez, client: RingezClient, create: Callable[..., Awaitable[Any]], path: str
) -> None:
    api.script("POST", path, Reply(503), Reply(502), Reply(200))
    await create(client)
    first_call = [s.json["idempotency_key"] for s in api.requests_to("POST", path)]
    assert len(first_call) == 3
    assert len(set(first_call)) == 1
    uuid.UUID(first_call[0])  # a real uuid, not a placeholder

    api.script("POST", path, Reply(503), Reply(200))
    await create(client)
    second_call = [s.json["idempotency_key"] for s in api.requests_to("POST", path)][3:]
    assert len(second_call) == 2 and len(set(second_call)) == 1
    assert second_call[0] != first_call[0]

    await create(client, idempotency_key="caller-chose-this")
    assert api.seen[-1].json["idempotency_key"] == "caller-chose-this"


async def test_initiate_body_fields(api: FakeRingez, client: RingezClient) -> None:
    api.script(
        "POST",
        "/calls/initiate",
        Reply(body={"call_id": "call_9", "status": "initiated", "estimated_rate": 0.02}),
    )
    call = await client.calls.initiate(
        session_id="s1",
        to_number="+15005550006",
        privacy_mode=True,
        call_settings=CallSettings(transcribe=True),
        idempotency_key="k1",
    )
    assert api.seen[0].json == {
        "session_id": "s1",
        "to_number": "+15005550006",
        "privacy_mode": True,
        "call_settings": {"transcribe": True},
        "idempotency_key": "k1",
    }
    assert (call.id, call.status, call.estimated_rate) == ("call_9", "initiated", 0.02)


# Retries.


async def test_503_twice_then_200(api: FakeRingez, client: RingezClient) -> None:
    api.script(
        "GET",
        "/calls/c1",
        Reply(503, {"error": {"code": "service_unavailable", "message": "try later"}}),
        Reply(503),
        Reply(200, {"call_id": "c1", "status": "in-progress"}),
    )
    with structlog.testing.capture_logs() as logs:
        status = await client.calls.get("c1")
    assert status.status == "in-progress"
    assert len(api.seen) == 3
    events = request_events(logs)
    assert [(e["attempt"], e["status"]) for e in events] == [(1, 503), (2, 503), (3, 200)]
    assert all(e["method"] == "GET" and e["path"] == "/calls/c1" for e in events)
    assert all(isinstance(e["duration_ms"], float) for e in events)


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_other_5xx_are_retried(api: FakeRingez, client: RingezClient, status: int):
    api.script("GET", "/analytics/spending", Reply(status), Reply(200))
    await client.analytics.spending()
    assert len(api.seen) == 2


async def test_5xx_until_attempts_run_out(api: FakeRingez) -> None:
    api.script("GET", "/calls/c1", Reply(500, {"error": {"code": "internal_error"}}))
    async with make_client(api.base_url, max_attempts=3) as c:
        with pytest.raises(ServerError) as caught:
            await c.calls.get("c1")
    assert len(api.seen) == 3
    assert caught.value.status == 500 and caught.value.retryable
    assert caught.value.code == "internal_error"


async def test_429_honours_retry_after(api: FakeRingez, client: RingezClient) -> None:
    api.script(
        "GET",
        "/calls/c1",
        Reply(429, headers={"Retry-After": "0.2"}),
        Reply(200, {"call_id": "c1"}),
    )
    with structlog.testing.capture_logs() as logs:
        await client.calls.get("c1")
    assert len(api.seen) == 2
    first = request_events(logs)[0]
    # The server's wait, not the (tiny) backoff this client is configured with.
    assert (first["status"], first["retry_in_s"]) == (429, 0.2)


async def test_429_asking_too_long_a_wait_is_raised_at_once(api: FakeRingez) -> None:
    api.script("GET", "/calls/c1", Reply(429, headers={"Retry-After": "120"}))
    async with make_client(api.base_url, max_retry_after=5.0) as c:
        with pytest.raises(RateLimited) as caught:
            await c.calls.get("c1")
    assert len(api.seen) == 1
    assert caught.value.retry_after == 120 and caught.value.retryable


async def test_429_without_retry_after_backs_off_until_attempts_run_out(api: FakeRingez):
    api.script("GET", "/calls/c1", Reply(429))
    async with make_client(api.base_url, max_attempts=3) as c:
        with pytest.raises(RateLimited) as caught:
            await c.calls.get("c1")
    assert len(api.seen) == 3
    assert caught.value.retry_after is None


async def test_402_is_insufficient_balance_and_not_retried(api: FakeRingez, client: RingezClient):
    error = {"error": {"code": "insufficient_balance", "message": "wallet has 0 minutes"}}
    api.script("POST", "/calls/initiate", Reply(402, error))
    with pytest.raises(InsufficientBalance) as caught:
        await client.calls.initiate(session_id="s1", to_number="+15005550006")
    assert len(api.seen) == 1
    err = caught.value
    assert (err.status, err.body, err.code, err.retryable) == (
        402,
        error,
        "insufficient_balance",
        False,
    )
    assert "wallet has 0 minutes" in str(err)


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, RingezError),
        (422, RingezError),
    ],
)
async def test_4xx_are_final(
    api: FakeRingez, client: RingezClient, status: int, exc_type: type[RingezError]
) -> None:
    api.script("GET", "/calls/c1", Reply(status, {"error": {"code": "nope", "message": "no"}}))
    with pytest.raises(exc_type) as caught:
        await client.calls.get("c1")
    assert type(caught.value) is exc_type
    assert len(api.seen) == 1
    assert caught.value.status == status and not caught.value.retryable


async def test_connection_refused_retries_then_unavailable() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/api/v1"
    with structlog.testing.capture_logs() as logs:
        async with make_client(base_url, max_attempts=3) as c:
            with pytest.raises(RingezUnavailable) as caught:
                await c.calls.get("c1")
    failures = [e for e in logs if e["event"] == "ringez.request.failed"]
    assert [e["attempt"] for e in failures] == [1, 2, 3]
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectionError)
    assert caught.value.retryable and caught.value.status is None


async def test_timeout_is_retried(api: FakeRingez) -> None:
    api.script("GET", "/calls/c1", Reply(hang=True), Reply(200, {"call_id": "c1"}))
    async with make_client(api.base_url, timeout=1.0) as c:
        with structlog.testing.capture_logs() as logs:
            status = await c.calls.get("c1")
    assert status.call_id == "c1"
    assert len(api.seen) == 2
    assert [e.get("error") for e in request_events(logs)] == ["TimeoutError", None]


async def test_timeouts_until_attempts_run_out(api: FakeRingez) -> None:
    api.script("GET", "/calls/c1", Reply(hang=True))
    async with make_client(api.base_url, timeout=0.2, max_attempts=2) as c:
        with pytest.raises(RingezUnavailable) as caught:
            await c.calls.get("c1")
    assert len(api.seen) == 2
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_non_json_success_is_invalid_response(api: FakeRingez, client: RingezClient):
    api.script("GET", "/calls/c1", Reply(200, raw=b"<html>hello</html>"))
    with pytest.raises(InvalidResponse):
        await client.calls.get("c1")
    api.script("GET", "/calls/c2", Reply(200, {"status": "ringing"}))  # no call_id
    with pytest.raises(InvalidResponse) as caught:
        await client.calls.get("c2")
    assert "call_id" in str(caught.value)
    assert len(api.seen) == 2 and not caught.value.retryable


async def test_non_json_error_body_is_kept_as_text(api: FakeRingez, client: RingezClient):
    api.script("GET", "/calls/c1", Reply(404, raw=b"no such thing"))
    with pytest.raises(NotFound) as caught:
        await client.calls.get("c1")
    assert caught.value.body == "no such thing"


# Secrets.


async def test_api_key_never_in_reprs_errors_or_logs(
    api: FakeRingez, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Every error status echoes the Authorization header back, as a careless proxy might.
    for status in (400, 401, 402, 403, 404, 429, 500, 503):
        api.script("GET", f"/calls/e{status}", Reply(status, echo_auth=True))
    api.script("GET", "/calls/bad", Reply(200, raw=f"Bearer {API_KEY}".encode()))
    errors: list[RingezError] = []
    with structlog.testing.capture_logs() as logs:
        async with make_client(api.base_url, max_attempts=2) as c:
            for path in [f"e{s}" for s in (400, 401, 402, 403, 404, 429, 500, 503)] + ["bad"]:
                with pytest.raises(RingezError) as caught:
                    await c.calls.get(path)
                errors.append(caught.value)
            async with make_client(f"http://127.0.0.1:{free_port()}/v1", max_attempts=1) as d:
                with pytest.raises(RingezUnavailable) as down:
                    await d.calls.get("x")
            errors.append(down.value)
            texts = [str(c), repr(c), repr(c.with_session_id("s")), repr(c.rate_limiter)]
    assert {type(e) for e in errors} >= {
        BadRequest,
        Unauthorized,
        InsufficientBalance,
        Forbidden,
        NotFound,
        RateLimited,
        ServerError,
        InvalidResponse,
        RingezUnavailable,
    }
    assert errors[0].body["error"]["message"] == "Bearer [redacted]"  # the echo arrived, scrubbed
    for err in errors:
        texts += [str(err), repr(err), str(err.body), str(err.args), str(err.__cause__)]
    texts += [str(e) for e in logs] + [r.getMessage() for r in caplog.records]
    assert logs, "requests were logged"
    leaked = [t for t in texts if API_KEY in t or API_KEY[8:] in t]
    assert not leaked


# Sessions: one per process, closed only by whoever made it.


async def test_client_closes_only_the_session_it_created(api: FakeRingez) -> None:
    async with aiohttp.ClientSession() as borrowed:
        async with make_client(api.base_url, session=borrowed) as c:
            await c.calls.get("c1")
        assert not borrowed.closed
        async with borrowed.get(api.base_url + "/calls/c1") as resp:
            assert resp.status == 200

    own = make_client(api.base_url)
    view = own.with_session_id("s1")
    await view.calls.get("c1")
    session = own._transport._session
    assert session is not None
    await view.aclose()  # a view never closes the shared session
    assert not session.closed
    await own.aclose()
    assert session.closed


async def test_concurrent_requests_share_one_session(api: FakeRingez, client: RingezClient):
    await asyncio.gather(*(client.calls.get(f"c{i}") for i in range(20)))
    assert len(api.seen) == 20
    assert len({s.headers.get("X-Agent-ID") for s in api.seen}) == 1


# Settings and the shared rate limiter.


async def test_from_settings(api: FakeRingez, redis_url: str, redis_client: Redis) -> None:
    settings = make_settings(
        redis_url,
        ringez_api_url=api.base_url,
        ringez_api_key=API_KEY,
        ringez_agent_id="agent-7",
        key_prefix="rzt",
    )
    async with RingezClient.from_settings(
        settings, redis=redis_client, rate_limit=2, rate_period=60, rate_max_wait=0
    ) as c:
        limiter = c.rate_limiter
        assert isinstance(limiter, RedisRateLimiter)
        assert limiter.key.startswith("rzt:ratelimit:") and API_KEY not in limiter.key
        await c.calls.get("c1")
        await c.calls.get("c2")
        # The budget is spent: the third request waits (here: may not wait) and is never sent.
        with pytest.raises(RateLimitWaitExceeded) as caught:
            await c.calls.get("c3")
    assert caught.value.retryable and caught.value.retry_after is not None
    assert [s.path for s in api.seen] == ["/calls/c1", "/calls/c2"]
    assert api.seen[0].headers["X-Agent-ID"] == "agent-7"
    assert await redis_client.zcard(limiter.key) == 2


async def test_retries_spend_the_rate_budget_too(api: FakeRingez, redis_client: Redis) -> None:
    limiter = RedisRateLimiter(redis_client, "rz:test:budget", limit=2, period=60, max_wait=0)
    api.script("GET", "/calls/c1", Reply(503))
    async with make_client(api.base_url, rate_limiter=limiter) as c:
        with pytest.raises(RateLimitWaitExceeded):
            await c.calls.get("c1")
    assert len(api.seen) == 2


async def test_a_transfer_goes_out_when_polling_has_spent_its_share(
    api: FakeRingez, redis_client: Redis
) -> None:
    # limit 10, reserve 20 %: background reads stop at 6 of 10, a live action still runs.
    limiter = RedisRateLimiter(
        redis_client, "rz:test:budget", limit=10, period=60, max_wait=0, reserve_live=0.2
    )
    async with make_client(api.base_url, rate_limiter=limiter) as c:
        for i in range(6):
            await c.calls.get(f"c{i}")
        with pytest.raises(RateLimitWaitExceeded):
            await c.calls.get("c6")
        # The same read in the live class (the escalation agent's check before a transfer).
        await c.with_priority(Priority.LIVE).calls.get("c6")
        await c.calls.transfer("c6", transfer_to="+15005550006")
        assert c.with_session_id("s1").priority is None
        assert c.with_priority(Priority.DIAL).with_session_id("s1").priority is Priority.DIAL
    assert [s.path for s in api.seen][-2:] == ["/calls/c6", "/calls/c6/actions"]


async def test_from_settings_needs_an_api_key(redis_url: str) -> None:
    with pytest.raises(SettingsError, match="RINGEZ_API_KEY"):
        RingezClient.from_settings(make_settings(redis_url, ringez_api_key=""))


# Pure helpers.


@given(
    attempt=st.integers(min_value=1, max_value=64),
    base=st.floats(min_value=0, max_value=10),
    cap=st.floats(min_value=0, max_value=100),
)
def test_backoff_is_full_jitter_within_the_cap(attempt: int, base: float, cap: float) -> None:
    delay = RetryPolicy(backoff_base=base, backoff_cap=cap).backoff(attempt)
    assert 0 <= delay <= min(cap, base * 2 ** (attempt - 1))


def test_parse_retry_after() -> None:
    from datetime import UTC, datetime

    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


# Actions carry no idempotency key: re-sent only when they surely did not run.


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_transfer_is_not_resent_after_an_ambiguous_5xx(
    api: FakeRingez, client: RingezClient, status: int
):
    path = "/calls/c1/actions"
    api.script("POST", path, Reply(status), Reply(200, {"call_id": "c1", "status": "executed"}))
    with pytest.raises(ServerError) as caught:
        await client.calls.transfer("c1", transfer_to="+15005550006")
    assert len(api.requests_to("POST", path)) == 1
    assert caught.value.maybe_executed


async def test_a_transfer_is_not_resent_after_a_timeout(api: FakeRingez) -> None:
    path = "/calls/c1/actions"
    api.script("POST", path, Reply(hang=True), Reply(200, {"call_id": "c1"}))
    async with make_client(api.base_url, timeout=0.3) as c:
        with pytest.raises(RingezUnavailable) as caught:
            await c.calls.transfer("c1", transfer_to="+15005550006")
    assert len(api.requests_to("POST", path)) == 1
    assert caught.value.maybe_executed


@pytest.mark.parametrize("status", [429, 503])
async def test_a_transfer_is_resent_after_an_answer_that_says_it_did_not_run(
    api: FakeRingez, client: RingezClient, status: int
):
    path = "/calls/c1/actions"
    api.script("POST", path, Reply(status), Reply(200, {"call_id": "c1", "status": "executed"}))
    result = await client.calls.transfer("c1", transfer_to="+15005550006")
    assert result.status == "executed"
    assert len(api.requests_to("POST", path)) == 2


@pytest.mark.parametrize("status", [429, 503])
async def test_one_attempt_means_no_retry_here(api: FakeRingez, client: RingezClient, status: int):
    # The escalation agent retries through its job instead, so it asks for one attempt.
    path = "/calls/c1/actions"
    api.script("POST", path, Reply(status), Reply(200, {"call_id": "c1", "status": "executed"}))
    with pytest.raises(RingezError) as caught:
        await client.calls.transfer("c1", transfer_to="+15005550006", attempts=1)
    assert caught.value.status == status
    assert caught.value.retryable and not caught.value.maybe_executed
    assert len(api.requests_to("POST", path)) == 1


async def test_a_refused_connection_is_known_not_to_have_run() -> None:
    async with make_client(f"http://127.0.0.1:{free_port()}/api/v1", max_attempts=2) as c:
        with pytest.raises(RingezUnavailable) as caught:
            await c.calls.transfer("c1", transfer_to="+15005550006")
    assert not caught.value.maybe_executed


async def test_an_error_echoing_a_registered_secret_is_scrubbed_where_it_is_made(
    api: FakeRingez, client: RingezClient
) -> None:
    from ringez_worker.logs import register_secrets

    token = "tok_unit_echoed_secret_77"
    register_secrets([token])  # what AgentSettings does with RECHARGE_PAYMENT_TOKEN
    message = {"error": "payment_declined", "message": f"payment token {token} was declined"}
    api.script("POST", "/wallet/add-credits", Reply(status=402, body=message))
    with pytest.raises(RingezError) as info:
        await client.request("POST", "/wallet/add-credits", json={"payment_token": token})
    assert token not in f"{info.value} {info.value!r} {info.value.body}"
    assert "[redacted]" in str(info.value.body)
