"""The local Ringez sandbox over real loopback HTTP: API, state, faults, scenarios, webhooks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ringez_worker import signature
from ringez_worker.sandbox import (
    ANSWERS,
    BUSY,
    NO_ANSWER,
    REQUEST_LOG,
    SANDBOX,
    EmitterConfig,
    FaultConfig,
    RouteConfig,
    Sandbox,
    SandboxConfig,
    WebhookEmitter,
    config_from_settings,
    create_sandbox_app,
    event_body,
    play_scenario,
    run_sandbox,
    start_sandbox,
    start_scenario,
)
from ringez_worker.sandbox.engine import Sink
from ringez_worker.sandbox.redis_server import free_port
from ringez_worker.worker.cli import build_event
from ringez_worker.worker.envelope import delivery_id
from tests.conftest import SECRET, wait_for

API = "/api/v1"
AUTH = {"Authorization": "Bearer sk_test_sandbox_key", "X-Agent-ID": "test-agent"}
RECEIVER_PATH = "/webhooks/ringez"


class Clock:
    """A wall clock the test moves by hand, for the idempotency window."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_config(**overrides: Any) -> SandboxConfig:
    base: dict[str, Any] = {
        "webhook_secret": SECRET,
        "pacing_seconds": 0.01,
        "no_answer_seconds": 0.05,
        "escalation_wait_seconds": 0.05,
        "emitter": EmitterConfig(
            max_attempts=4, backoff_seconds=0.01, backoff_max_seconds=0.05, timeout_seconds=2.0
        ),
    }
    base.update(overrides)
    return SandboxConfig(**base)


@pytest.fixture
async def make_sandbox() -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
    clients: list[TestClient] = []

    async def make(**overrides: Any) -> TestClient:
        client = TestClient(TestServer(create_sandbox_app(make_config(**overrides))))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def sandbox(make_sandbox) -> TestClient:
    return await make_sandbox()


@dataclass
class Hook:
    """A webhook endpoint on loopback that answers from a script and records every request."""

    statuses: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    forward_to: str | None = None
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if self.delays:
            # Simulates a receiver too slow to answer within the sender's timeout.
            await asyncio.sleep(self.delays.pop(0))
        if self.statuses:
            status, payload = self.statuses.pop(0), b'{"error": "scripted"}'
        elif self.forward_to is not None:
            sig = request.headers[signature.HEADER]
            headers = {"Content-Type": "application/json", signature.HEADER: sig}
            async with (
                aiohttp.ClientSession() as session,
                session.post(self.forward_to, data=body, headers=headers) as resp,
            ):
                status, payload = resp.status, await resp.read()
        else:
            status, payload = 200, b'{"received": true}'
        self.answers.append(status)
        return web.Response(status=status, body=payload, content_type="application/json")

    def events(self) -> list[str]:
        return [orjson.loads(b)["event"] for b in self.bodies]


@pytest.fixture
async def make_hook() -> AsyncIterator[Callable[..., Awaitable[Hook]]]:
    servers: list[TestServer] = []

    async def make(**kwargs: Any) -> Hook:
        hook = Hook(**kwargs)
        app = web.Application()
        app.router.add_post("/hook", hook.handle)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        hook.url = str(server.make_url("/hook"))
        return hook

    yield make
    for server in servers:
        await server.close()


def sb_of(client: TestClient) -> Sandbox:
    return client.app[SANDBOX]


async def post(client: TestClient, path: str, body: dict | None = None) -> tuple[int, Any]:
    resp = await client.post(API + path, json=body or {}, headers=AUTH)
    return resp.status, await resp.json()


async def get(client: TestClient, path: str, **params: Any) -> tuple[int, Any]:
    resp = await client.get(API + path, params=params, headers=AUTH)
    return resp.status, await resp.json()


async def new_session(client: TestClient, **consent: Any) -> dict:
    status, body = await post(
        client,
        "/sessions/create",
        {"session_type": "guest", "user_consent": {"calling_authorized": True, **consent}},
    )
    assert status == 200, body
    return body


async def new_call(client: TestClient, session_id: str, number: str, **extra: Any) -> dict:
    request = {"session_id": session_id, "to_number": number, **extra}
    status, body = await post(client, "/calls/initiate", request)
    assert status == 200, body
    return body


async def call_status(client: TestClient, call_id: str) -> str:
    return (await get(client, f"/calls/{call_id}"))[1]["status"]


async def wait_status(client: TestClient, call_id: str, status: str) -> None:
    async def reached() -> bool:
        return await call_status(client, call_id) == status

    await wait_for(reached, deadline_s=5, what=f"call {call_id} to be {status}")


def call_events(sb: Sandbox, call_id: str) -> list[str]:
    return [e.event for e in sb.events if e.data.get("call_id") == call_id]


# Auth, errors, request log.


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_api_key"),
        ("Bearer sk_live_real_money", "invalid_api_key"),
        ("Bearer ", "invalid_api_key"),
        ("Basic sk_test_abc", "invalid_api_key"),
        ("Bearer sk_test_", "invalid_api_key"),
    ],
)
async def test_the_api_needs_a_sandbox_key(sandbox, authorization, code):
    headers = {"Authorization": authorization} if authorization else {}
    resp = await sandbox.post(API + "/sessions/create", json={}, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == code
    assert not sb_of(sandbox).state.sessions


async def test_a_configured_key_list_and_agent_id_are_enforced(make_sandbox):
    client = await make_sandbox(api_keys=frozenset({"sk_test_only"}), require_agent_id=True)
    other = await client.post(API + "/sessions/create", headers=AUTH)
    assert other.status == 401
    no_agent = await client.post(
        API + "/sessions/create", headers={"Authorization": "Bearer sk_test_only"}
    )
    assert no_agent.status == 400
    assert (await no_agent.json())["error"]["code"] == "missing_agent_id"
    ok = await client.post(
        API + "/sessions/create",
        headers={"Authorization": "Bearer sk_test_only", "X-Agent-ID": "a"},
    )
    assert ok.status == 200


async def test_unknown_things_are_json_404s(sandbox):
    for path in ("/calls/call_nope", "/sessions/sess_nope", "/transcripts/call_nope", "/nothing"):
        status, body = await get(sandbox, path)
        assert status == 404, path
        assert set(body["error"]) == {"code", "message"}
    status, body = await post(sandbox, "/calls/call_nope/actions", {"action": "hangup"})
    assert (status, body["error"]["code"]) == (404, "call_not_found")


async def test_bad_json_is_a_400(sandbox):
    resp = await sandbox.post(API + "/sessions/create", data=b"{nope", headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_json"


async def test_every_request_is_logged_without_the_api_key(sandbox):
    session = await new_session(sandbox)
    await get(sandbox, "/wallet/balance", session_id=session["session_id"])
    await sandbox.post(API + "/sessions/create", json={"x": 1})  # no key: still logged

    resp = await sandbox.get("/_sandbox/requests", params={"path_prefix": API})
    log = (await resp.json())["requests"]
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", API + "/sessions/create", 200),
        ("GET", API + "/wallet/balance", 200),
        ("POST", API + "/sessions/create", 401),
    ]
    assert log[0]["json"]["user_consent"] == {"calling_authorized": True}
    assert log[0]["headers"]["X-Agent-ID"] == "test-agent"
    assert log[1]["query"] == {"session_id": session["session_id"]}
    assert all("authorization" not in {k.lower() for k in e["headers"]} for e in log)
    assert "sk_test_sandbox_key" not in orjson.dumps(log).decode()
    assert sandbox.app[REQUEST_LOG][: len(log)] == log


# Sessions and wallet.


async def test_session_lifecycle(sandbox):
    session = await new_session(sandbox, currency="INR", max_spend_limit=100)
    assert session["wallet_balance"] == {"minutes": 30.0, "value": 120.0, "currency": "INR"}
    assert set(session) >= {"session_id", "session_token", "expires_at", "rate_limits"}
    sid = session["session_id"]
    status, got = await get(sandbox, f"/sessions/{sid}")
    assert status == 200
    assert got["active"] is True
    assert (got["calls_made"], got["total_duration"]) == (0, 0)

    resp = await sandbox.delete(f"{API}/sessions/{sid}", headers=AUTH)
    assert resp.status == 200
    closed = await resp.json()
    assert closed["success"] is True
    assert closed["final_balance"]["minutes"] == 30.0
    assert (await get(sandbox, f"/sessions/{sid}"))[1]["active"] is False
    status, body = await post(sandbox, "/calls/initiate", {"session_id": sid, "to_number": ANSWERS})
    assert (status, body["error"]["code"]) == (403, "session_closed")


async def test_add_credits_is_idempotent_per_key(sandbox):
    sid = (await new_session(sandbox))["session_id"]
    request = {
        "session_id": sid,
        "payment_method": "stripe",
        "amount": 5.0,
        "currency": "USD",
        "payment_token": "tok_ok",
        "idempotency_key": "credit-1",
    }
    answers = await asyncio.gather(
        *(sandbox.post(API + "/wallet/add-credits", json=request, headers=AUTH) for _ in range(8))
    )
    bodies = [await a.json() for a in answers]
    assert {a.status for a in answers} == {200}
    assert len({b["transaction_id"] for b in bodies}) == 1
    assert sorted(a.headers.get("Idempotent-Replayed", "") for a in answers).count("true") == 7
    first = bodies[0]
    assert first["status"] == "completed"
    assert first["minutes_added"] == 100.0  # $5 at $0.05 a minute
    assert first["new_balance"]["minutes"] == 130.0

    status, balance = await get(sandbox, "/wallet/balance", session_id=sid)
    assert status == 200
    assert balance["balance"] == {"minutes": 130.0, "value": 6.5, "currency": "USD"}
    assert balance["last_transaction"]["transaction_id"] == first["transaction_id"]

    status, second = await post(
        sandbox,
        "/wallet/add-credits",
        {**request, "idempotency_key": "credit-2", "plan": "starter"},
    )
    assert status == 200
    assert second["transaction_id"] != first["transaction_id"]
    assert second["new_balance"]["minutes"] == 190.0


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"payment_method": "cash"}, 400, "invalid_payment_method"),
        ({"payment_method": ["paypal"]}, 400, "invalid_payment_method"),
        ({"amount": -1}, 400, "invalid_amount"),
        ({"currency": "INR"}, 400, "currency_mismatch"),
        ({"plan": "gold"}, 400, "invalid_plan"),
        ({"payment_token": "tok_declined"}, 402, "payment_declined"),
        ({"session_id": "sess_missing"}, 404, "session_not_found"),
    ],
)
async def test_add_credits_rejects_bad_requests_and_credits_nothing(sandbox, change, status, code):
    sid = (await new_session(sandbox))["session_id"]
    request = {"session_id": sid, "payment_method": "paypal", "amount": 1.0, **change}
    got, body = await post(sandbox, "/wallet/add-credits", request)
    assert (got, body["error"]["code"]) == (status, code)
    assert (await get(sandbox, "/wallet/balance", session_id=sid))[1]["balance"]["minutes"] == 30.0


# Calls.


async def test_an_answered_call_drains_the_wallet_when_hung_up(sandbox):
    sid = (await new_session(sandbox))["session_id"]
    status, call = await post(sandbox, "/calls/initiate", {"session_id": sid, "to_number": ANSWERS})
    assert status == 200
    assert call["status"] == "initiated"
    assert call["from_number"] == "+15005550000"
    assert (call["estimated_rate"], call["currency"]) == (0.05, "USD")
    cid = call["call_id"]
    await wait_status(sandbox, cid, "in-progress")

    resp = await sandbox.delete(f"{API}/calls/{cid}", headers=AUTH)
    assert resp.status == 200
    ended = await resp.json()
    assert ended["status"] == "completed"
    # Every started minute is billed: a few milliseconds cost one minute.
    assert ended["cost"] == 0.05
    assert ended["remaining_balance"] == {"minutes": 29.0, "value": 1.45, "currency": "USD"}
    assert (await get(sandbox, "/wallet/balance", session_id=sid))[1]["balance"]["minutes"] == 29.0
    again = await (await sandbox.delete(f"{API}/calls/{cid}", headers=AUTH)).json()
    assert again["remaining_balance"]["minutes"] == 29.0  # hanging up twice charges once

    sb = sb_of(sandbox)
    await wait_for(lambda: "call.completed" in call_events(sb, cid), what="call.completed")
    assert call_events(sb, cid) == [
        "call.initiated",
        "call.ringing",
        "call.answered",
        "call.completed",
    ]
    session = (await get(sandbox, f"/sessions/{sid}"))[1]
    assert session["calls_made"] == 1


async def test_calls_need_e164_numbers_and_a_balance(make_sandbox):
    client = await make_sandbox(initial_minutes=0.5)
    sid = (await new_session(client))["session_id"]
    for bad in ("5005550006", "+0123", "+1 500 555 0006", 15005550006, None):
        status, body = await post(client, "/calls/initiate", {"session_id": sid, "to_number": bad})
        assert (status, body["error"]["code"]) == (400, "invalid_phone_number"), bad
    status, body = await post(
        client,
        "/calls/initiate",
        {"session_id": sid, "to_number": ANSWERS, "from_number": "12025551000"},
    )
    assert (status, body["error"]["code"]) == (400, "invalid_phone_number")
    status, body = await post(client, "/calls/initiate", {"session_id": sid, "to_number": ANSWERS})
    assert (status, body["error"]["code"]) == (402, "insufficient_balance")
    assert not sb_of(client).state.calls


async def test_calls_per_hour_is_a_429_with_retry_after(make_sandbox):
    client = await make_sandbox(calls_per_hour=2)
    sid = (await new_session(client))["session_id"]
    for _ in range(2):
        await new_call(client, sid, BUSY)
    resp = await client.post(
        API + "/calls/initiate", json={"session_id": sid, "to_number": BUSY}, headers=AUTH
    )
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limited"
    assert 3500 <= int(resp.headers["Retry-After"]) <= 3600


async def test_initiate_is_idempotent_for_five_minutes(make_sandbox):
    clock = Clock()
    client = await make_sandbox(clock=clock)
    sid = (await new_session(client))["session_id"]
    request = {"session_id": sid, "to_number": ANSWERS, "idempotency_key": "call-1"}
    first = await client.post(API + "/calls/initiate", json=request, headers=AUTH)
    clock.now += 299
    second = await client.post(API + "/calls/initiate", json=request, headers=AUTH)
    first_id = (await first.json())["call_id"]
    assert (await second.json())["call_id"] == first_id
    assert second.headers["Idempotent-Replayed"] == "true"
    status, body = await post(client, "/calls/initiate", {**request, "to_number": BUSY})
    assert (status, body["error"]["code"]) == (409, "idempotency_key_reused")

    clock.now += 2  # 301 s after the first: the key names a new call
    third = await (await client.post(API + "/calls/initiate", json=request, headers=AUTH)).json()
    assert third["call_id"] != first_id
    assert len(sb_of(client).state.calls) == 2
    sb = sb_of(client)
    await wait_for(lambda: "call.initiated" in call_events(sb, third["call_id"]))
    # A replay starts no second simulation of the call.
    assert call_events(sb, first_id).count("call.initiated") == 1


async def test_sandbox_numbers_behave(sandbox, make_hook):
    hook = await make_hook()
    sid = (await new_session(sandbox))["session_id"]
    ids = {}
    for number in (ANSWERS, BUSY, NO_ANSWER, "+14155551234"):
        status, call = await post(
            sandbox,
            "/calls/initiate",
            {"session_id": sid, "to_number": number, "webhook_url": hook.url},
        )
        assert status == 200
        ids[number] = call["call_id"]
    sb = sb_of(sandbox)
    await wait_status(sandbox, ids[BUSY], "busy")
    await wait_status(sandbox, ids[NO_ANSWER], "no-answer")
    await wait_status(sandbox, ids["+14155551234"], "in-progress")
    # +15005550006 is still connected after the no-answer number has given up.
    assert await call_status(sandbox, ids[ANSWERS]) == "in-progress"
    await wait_for(lambda: "call.failed" in call_events(sb, ids[NO_ANSWER]))

    assert call_events(sb, ids[BUSY]) == ["call.initiated", "call.failed"]
    assert call_events(sb, ids[NO_ANSWER]) == ["call.initiated", "call.ringing", "call.failed"]
    assert call_events(sb, ids[ANSWERS]) == ["call.initiated", "call.ringing", "call.answered"]
    reasons = {e.data["call_id"]: e.data["reason"] for e in sb.events if e.event == "call.failed"}
    assert reasons == {ids[BUSY]: "busy", ids[NO_ANSWER]: "no-answer"}
    busy = (await get(sandbox, f"/calls/{ids[BUSY]}"))[1]
    assert busy["estimated_cost"]["amount"] == 0
    assert (await get(sandbox, "/wallet/balance", session_id=sid))[1]["balance"]["minutes"] == 30
    # Each event reached the call's webhook_url, signed.
    await wait_for(lambda: len(hook.bodies) == len(sb.events), what="every delivery")
    assert all(
        signature.verify(b, h[signature.HEADER], [SECRET.encode()])
        for b, h in zip(hook.bodies, hook.headers, strict=True)
    )

    status, history = await get(sandbox, "/calls/history", session_id=sid, limit=2)
    assert status == 200
    assert history["pagination"] == {"total": 4, "limit": 2, "offset": 0, "has_more": True}
    status, failed = await get(sandbox, "/calls/history", session_id=sid, status="busy")
    assert [c["call_id"] for c in failed["calls"]] == [ids[BUSY]]


async def test_call_actions_and_a_completed_call_cannot_be_transferred(sandbox):
    sid = (await new_session(sandbox))["session_id"]
    cid = (await new_call(sandbox, sid, ANSWERS))["call_id"]
    await wait_status(sandbox, cid, "in-progress")
    path = f"/calls/{cid}/actions"
    status, held = await post(sandbox, path, {"action": "hold"})
    assert (status, held["status"], held["action"]) == (200, "executed", "hold")
    assert (await get(sandbox, f"/calls/{cid}"))[1]["on_hold"] is True
    status, _ = await post(sandbox, path, {"action": "dtmf", "parameters": {"digits": "12#"}})
    assert status == 200
    bad = await post(sandbox, path, {"action": "dtmf", "parameters": {"digits": "x"}})
    assert bad[0] == 400
    bad = await post(sandbox, path, {"action": "transfer", "parameters": {"transfer_to": "123"}})
    assert (bad[0], bad[1]["error"]["code"]) == (400, "invalid_phone_number")
    assert (await post(sandbox, path, {"action": "explode"}))[0] == 400
    status, _ = await post(
        sandbox, path, {"action": "transfer", "parameters": {"transfer_to": "+14155559999"}}
    )
    assert status == 200
    call = (await get(sandbox, f"/calls/{cid}"))[1]
    assert (call["transferred_to"], call["on_hold"]) == ("+14155559999", False)

    assert (await post(sandbox, path, {"action": "hangup"}))[0] == 200
    assert await call_status(sandbox, cid) == "completed"
    status, body = await post(
        sandbox, path, {"action": "transfer", "parameters": {"transfer_to": "+14155559999"}}
    )
    assert (status, body["error"]["code"]) == (409, "call_not_active")


async def test_batch_transcripts_analytics_and_subscriptions(sandbox, make_hook):
    hook = await make_hook()
    sid = (await new_session(sandbox, max_spend_limit=10))["session_id"]
    status, sub = await post(
        sandbox,
        "/webhooks/subscribe",
        {
            "session_id": sid,
            "webhook_url": hook.url,
            "events": ["call.failed"],
            "secret": "whsec_subscriber",
        },
    )
    assert (status, sub["status"]) == (200, "active")
    for events in (["call.exploded"], [["call.failed"]]):
        request = {"session_id": sid, "webhook_url": hook.url, "events": events}
        assert (await post(sandbox, "/webhooks/subscribe", request))[0] == 400
    status, _ = await post(
        sandbox, "/batch/calls", {"session_id": sid, "calls": [{"to_number": "1"}]}
    )
    assert status == 400
    assert not sb_of(sandbox).state.calls  # nothing placed when one number is bad
    status, batch = await post(
        sandbox,
        "/batch/calls",
        {"session_id": sid, "calls": [{"to_number": BUSY}, {"to_number": BUSY}]},
    )
    assert status == 200
    assert [c["status"] for c in batch["calls"]] == ["initiated", "initiated"]
    await wait_for(lambda: len(hook.bodies) == 2, what="two call.failed deliveries")
    assert hook.events() == ["call.failed", "call.failed"]
    assert all(
        signature.verify(b, h[signature.HEADER], [b"whsec_subscriber"])
        for b, h in zip(hook.bodies, hook.headers, strict=True)
    )

    cid = batch["calls"][0]["call_id"]
    status, tr = await post(sandbox, f"/calls/{cid}/transcribe", {"language": "en-GB"})
    assert status == 200
    assert tr["transcription_id"].startswith("tr_")
    status, transcript = await get(sandbox, f"/transcripts/{cid}")
    assert (status, transcript["transcript"], transcript["language"]) == (200, [], "en-GB")

    status, metrics = await get(
        sandbox, "/analytics/call-metrics", session_id=sid, group_by="status"
    )
    assert status == 200
    assert metrics["metrics"]["total_calls"] == 2
    assert metrics["metrics"]["success_rate"] == 0.0
    assert metrics["breakdown"] == [{"status": "busy", "calls": 2, "duration": 0, "cost": 0.0}]
    status, spend = await get(sandbox, "/analytics/spending", session_id=sid)
    assert spend["current_period"] == {
        "total_spent": 0.0,
        "budget_limit": 10.0,
        "budget_remaining": 10.0,
    }


# AI helpers.


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("I want to speak to your manager", "escalation_request"),
        ("Can I talk to a human please", "escalation_request"),
        ("get me a supervisor", "escalation_request"),
        ("What is my balance?", "account_inquiry"),
        ("how many minutes are left on my account", "account_inquiry"),
        ("the app shows an error and my connection keeps dropping", "technical_support"),
        ("I forgot my password", "technical_support"),
        ("What are your opening hours?", "general_inquiry"),
    ],
)
async def test_intent_detection_rules(sandbox, text, intent):
    status, body = await post(
        sandbox, "/agents/intent-detection", {"call_id": "c", "transcript_segment": text}
    )
    assert status == 200
    assert body["intent"] == intent
    if intent == "escalation_request":
        assert body["suggested_action"] == "transfer"
        assert body["suggested_parameters"]["transfer_to"] == ANSWERS


@pytest.mark.parametrize(
    ("text", "sentiment", "escalate"),
    [
        ("This is terrible, I'm furious!", "negative", True),
        ("This is ridiculous, cancel my plan", "negative", True),
        ("Get me your manager", "negative", True),
        ("There is a problem with my bill", "negative", False),
        ("Thanks, that was great", "positive", False),
        ("I would like to check my order", "neutral", False),
    ],
)
async def test_sentiment_rules(sandbox, text, sentiment, escalate):
    status, body = await post(
        sandbox,
        "/agents/sentiment-analysis",
        {"call_id": "c", "transcript_segment": text, "include_recommendations": True},
    )
    assert status == 200
    assert body["sentiment"] == sentiment
    assert body["escalation_recommended"] is escalate
    if escalate:
        assert body["sentiment_score"] <= -0.7
    elif sentiment == "positive":
        assert body["sentiment_score"] > 0
    assert -1 <= body["sentiment_score"] <= 1


async def test_call_routing_is_configurable(make_sandbox):
    client = await make_sandbox(routing=RouteConfig(route_to="+14155550100"))
    status, route = await post(client, "/agents/call-routing", {"routing_criteria": {}})
    assert status == 200
    assert (route["route_to"], route["agent_available"]) == ("+14155550100", True)
    assert route["fallback_options"]

    resp = await client.post("/_sandbox/routing", json={"agent_available": False})
    assert resp.status == 200
    status, route = await post(client, "/agents/call-routing", {})
    assert (route["route_to"], route["agent_available"]) == ("+14155550100", False)
    assert (await client.post("/_sandbox/routing", json={"nope": 1})).status == 400


async def test_voice_synthesis_is_deterministic(sandbox):
    request = {"text": "Please hold while I transfer you", "voice": "alloy", "speed": 1.0}
    first = await post(sandbox, "/agents/voice-synthesis", request)
    second = await post(sandbox, "/agents/voice-synthesis", request)
    assert first == second
    assert first[1]["audio_id"].startswith("audio_")
    assert first[1]["duration"] > 0
    assert (await post(sandbox, "/agents/voice-synthesis", {"text": ""}))[0] == 400


# Faults.


async def statuses(client: TestClient, n: int) -> list[int]:
    out = []
    for _ in range(n):
        resp = await client.get(API + "/analytics/spending", headers=AUTH)
        out.append(resp.status)
        if resp.status == 429:
            assert resp.headers["Retry-After"] == "3"
        if resp.status != 200:
            assert (await resp.json())["error"]["message"] == "injected by the sandbox"
    return out


async def test_fault_injection_is_deterministic_for_a_seed(sandbox):
    faults = {"rate_503": 0.3, "rate_429": 0.2, "retry_after_seconds": 3, "seed": 42}
    assert (await sandbox.post("/_sandbox/faults", json=faults)).status == 200
    first = await statuses(sandbox, 40)
    assert (await sandbox.post("/_sandbox/faults", json=faults)).status == 200
    second = await statuses(sandbox, 40)
    assert first == second
    assert {200, 503, 429} == set(first)
    assert 5 <= first.count(503) <= 20

    resp = await sandbox.get("/_sandbox/faults")
    assert (await resp.json())["injected"] == {
        "429": second.count(429),
        "503": second.count(503),
    }
    faulted = [e for e in sandbox.app[REQUEST_LOG] if e["fault"]]
    assert len(faulted) == 2 * (40 - first.count(200))

    assert (await sandbox.delete("/_sandbox/faults")).status == 200
    assert await statuses(sandbox, 10) == [200] * 10


async def test_scripted_faults_come_first_and_control_paths_are_exempt(sandbox):
    resp = await sandbox.post(
        "/_sandbox/faults", json={"fail_next": [503, 0, 429], "retry_after_seconds": 3}
    )
    assert resp.status == 200
    assert (await sandbox.get("/_sandbox/health")).status == 200
    assert await statuses(sandbox, 4) == [503, 200, 429, 200]
    bad = await sandbox.post("/_sandbox/faults", json={"rate_503": 2})
    assert bad.status == 400
    assert (await bad.json())["error"]["code"] == "invalid_faults"


async def test_a_lagging_balance_read_leaves_out_recent_credits(sandbox):
    sb = sb_of(sandbox)
    now = [1_000_000.0]
    sb.state.config.clock = lambda: now[0]
    assert (await sandbox.post("/_sandbox/faults", json={"balance_lag_seconds": 60})).status == 200
    sid = (await new_session(sandbox))["session_id"]
    credit = {"session_id": sid, "payment_method": "stripe", "plan": "starter"}
    status, tx = await post(sandbox, "/wallet/add-credits", credit)
    assert status == 200 and tx["new_balance"]["minutes"] == 90.0  # the answer is current
    _, lagged = await get(sandbox, "/wallet/balance", session_id=sid)
    assert lagged["balance"]["minutes"] == 30.0 and lagged["last_transaction"] is None
    now[0] += 61  # the replica caught up
    _, settled = await get(sandbox, "/wallet/balance", session_id=sid)
    assert settled["balance"]["minutes"] == 90.0
    assert settled["last_transaction"]["transaction_id"] == tx["transaction_id"]
    bad = await sandbox.post("/_sandbox/faults", json={"balance_lag_seconds": -1})
    assert bad.status == 400


async def test_faults_from_the_config(make_sandbox):
    client = await make_sandbox(faults=FaultConfig(fail_next=[503]))
    assert await statuses(client, 2) == [503, 200]


# The emitter.


async def test_event_body_is_what_the_cli_builds():
    data = {"call_id": "c1", "session_id": "s1", "duration": 3}
    stamp = "2026-11-24T12:00:00.000Z"
    assert event_body("call.completed", data, stamp) == build_event("call.completed", data, stamp)


async def test_emitter_signs_like_ringez_and_redelivers_identical_bytes(make_hook):
    hook = await make_hook(statuses=[503, 500])
    emitter = WebhookEmitter(
        EmitterConfig(max_attempts=5, backoff_seconds=0.01, backoff_max_seconds=0.02), SECRET
    )
    try:
        [delivery] = await emitter.emit(
            hook.url, "call.answered", {"call_id": "c", "session_id": "s"}
        )
    finally:
        await emitter.aclose()
    assert hook.answers == [503, 500, 200]
    assert [a.status for a in delivery.attempts] == [503, 500, 200]
    assert delivery.delivered
    assert len(set(hook.bodies)) == 1
    assert hook.bodies[0] == delivery.body
    sigs = {h[signature.HEADER] for h in hook.headers}
    assert sigs == {signature.sign(delivery.body, SECRET)}
    [sig] = sigs
    assert sig == sig.lower()
    assert signature.verify(delivery.body, sig, [SECRET.encode()])
    assert not signature.verify(delivery.body, sig, [b"whsec_other"])


async def test_emitter_retries_a_timeout_and_gives_up_after_max_attempts(make_hook):
    slow = await make_hook(delays=[1.0])
    down = await make_hook(statuses=[503] * 10)
    emitter = WebhookEmitter(
        EmitterConfig(
            # 0.2 s once timed the fast second attempt out too on a loaded box.
            max_attempts=3,
            backoff_seconds=0.01,
            backoff_max_seconds=0.02,
            timeout_seconds=0.6,
        ),
        SECRET,
    )
    try:
        [late] = await emitter.emit(slow.url, "call.ringing", {"call_id": "c", "session_id": "s"})
        [lost] = await emitter.emit(down.url, "call.ringing", {"call_id": "d", "session_id": "s"})
    finally:
        await emitter.aclose()
    assert [(a.status, a.error) for a in late.attempts] == [(None, "TimeoutError"), (200, None)]
    assert late.delivered
    assert [a.status for a in lost.attempts] == [503, 503, 503]
    assert not lost.delivered
    assert len(down.bodies) == 3
    assert [d.delivered for d in emitter.deliveries] == [True, False]


async def test_duplicate_mode_delivers_each_event_twice(make_hook):
    hook = await make_hook()
    emitter = WebhookEmitter(EmitterConfig(duplicate=True), SECRET)
    try:
        deliveries = await emitter.emit(hook.url, "call.completed", {"call_id": "c"})
    finally:
        await emitter.aclose()
    assert [d.duplicate for d in deliveries] == [False, True]
    assert len(hook.bodies) == 2
    assert hook.bodies[0] == hook.bodies[1]
    assert hook.headers[0][signature.HEADER] == hook.headers[1][signature.HEADER]


# Scenarios.


def payloads(hook: Hook) -> list[dict]:
    return [orjson.loads(b) for b in hook.bodies]


async def test_calm_scenario(sandbox, make_hook):
    hook = await make_hook()
    run = await play_scenario(sb_of(sandbox), "calm", hook.url)
    sent = payloads(hook)
    names = [p["event"] for p in sent]
    assert names[:3] == ["call.initiated", "call.ringing", "call.answered"]
    assert names[-1] == "call.completed"
    lines = [p["data"] for p in sent if p["event"] == "transcription.updated"]
    assert 2 <= len(lines) <= 4
    assert names == names[:3] + ["transcription.updated"] * len(lines) + ["call.completed"]
    for p in sent:
        assert (p["data"]["call_id"], p["data"]["session_id"]) == (run.call_id, run.session_id)
        assert isinstance(p["timestamp"], str)
    assert sent[2]["data"]["answered_at"]
    for line in lines:
        assert (line["speaker"], line["is_final"]) == ("caller", True)
        assert 0 < line["confidence"] <= 1
        mood = (
            await post(sandbox, "/agents/sentiment-analysis", {"transcript_segment": line["text"]})
        )[1]
        assert mood["sentiment"] != "negative"
    completed = sent[-1]["data"]
    assert (completed["duration"], completed["cost"]) == (95, 0.1)  # 2 started minutes
    for body, headers in zip(hook.bodies, hook.headers, strict=True):
        assert signature.verify(body, headers[signature.HEADER], [SECRET.encode()])

    call = (await get(sandbox, f"/calls/{run.call_id}"))[1]
    assert (call["status"], call["duration"]) == ("completed", 95)
    transcript = (await get(sandbox, f"/transcripts/{run.call_id}"))[1]["transcript"]
    assert [s["text"] for s in transcript] == [line["text"] for line in lines]
    balance = (await get(sandbox, "/wallet/balance", session_id=run.session_id))[1]["balance"]
    assert balance["minutes"] == 28.0


async def test_angry_scenario_waits_for_a_transfer(make_sandbox, make_hook):
    client = await make_sandbox(escalation_wait_seconds=10.0)
    hook = await make_hook()
    resp = await client.post("/_sandbox/scenarios/angry", json={"receiver_url": hook.url})
    assert resp.status == 202
    run = await resp.json()
    cid = run["call_id"]

    def asked_for_manager() -> bool:
        return any("manager" in p["data"].get("text", "") for p in payloads(hook))

    await wait_for(asked_for_manager, what="the caller to ask for a manager")
    lines = [p["data"]["text"] for p in payloads(hook) if p["event"] == "transcription.updated"]
    moods = [
        (await post(client, "/agents/sentiment-analysis", {"transcript_segment": t}))[1]
        for t in lines
    ]
    assert moods[-1]["sentiment"] == "negative"
    assert moods[-1]["escalation_recommended"] is True
    intent = (await post(client, "/agents/intent-detection", {"transcript_segment": lines[-1]}))[1]
    assert intent["intent"] == "escalation_request"

    # What an agent does: transfer the real call the events name.
    status, _ = await post(
        client,
        f"/calls/{cid}/actions",
        {
            "action": "transfer",
            "parameters": {"transfer_to": intent["suggested_parameters"]["transfer_to"]},
        },
    )
    assert status == 200
    await wait_for(lambda: "call.completed" in hook.events(), what="call.completed")
    sent = payloads(hook)
    assert sent[-2]["data"]["speaker"] == "recipient"
    assert sent[-1]["data"]["transferred_to"] == ANSWERS
    assert sent[-1]["data"]["session_id"] == run["session_id"]
    assert await call_status(client, cid) == "completed"


async def test_angry_caller_hangs_up_when_nobody_transfers(sandbox, make_hook):
    hook = await make_hook()
    run = await play_scenario(sb_of(sandbox), "angry", hook.url)
    assert hook.events()[-1] == "call.completed"
    assert payloads(hook)[-1]["data"]["transferred_to"] is None
    assert "recipient" not in [p["data"].get("speaker") for p in payloads(hook)]
    assert sb_of(sandbox).state.calls[run.call_id].status == "completed"


async def test_busy_and_no_answer_scenarios(sandbox, make_hook):
    hook = await make_hook()
    busy = await play_scenario(sb_of(sandbox), "busy", hook.url)
    assert hook.events() == ["call.initiated", "call.failed"]
    assert payloads(hook)[-1]["data"]["reason"] == "busy"
    assert await call_status(sandbox, busy.call_id) == "busy"

    hook.bodies.clear()
    silent = await play_scenario(sb_of(sandbox), "no_answer", hook.url)
    assert hook.events() == ["call.initiated", "call.ringing", "call.failed"]
    assert payloads(hook)[-1]["data"]["reason"] == "no-answer"
    assert await call_status(sandbox, silent.call_id) == "no-answer"


async def test_low_balance_scenario(sandbox, make_hook):
    hook = await make_hook()
    run = await play_scenario(sb_of(sandbox), "low_balance", hook.url)
    names = hook.events()
    assert names[-2:] == ["call.completed", "balance.low"]
    low = payloads(hook)[-1]["data"]
    assert low["session_id"] == run.session_id
    assert set(low["balance"]) == {"minutes", "value", "currency"}
    assert low["balance"]["minutes"] < sb_of(sandbox).config.low_balance_minutes
    wallet = (await get(sandbox, "/wallet/balance", session_id=run.session_id))[1]["balance"]
    assert wallet == low["balance"]


async def test_scenario_endpoint_errors(sandbox):
    resp = await sandbox.post("/_sandbox/scenarios/nope", json={"receiver_url": "http://x/"})
    assert resp.status == 404
    resp = await sandbox.post("/_sandbox/scenarios/calm", json={})
    assert resp.status == 400
    listing = await (await sandbox.get("/_sandbox/scenarios")).json()
    assert set(listing["scenarios"]) == {
        "calm",
        "angry",
        "busy",
        "no_answer",
        "low_balance",
        "poor_quality",
    }


async def test_an_agent_hang_up_cuts_a_scenario_short(make_sandbox, make_hook):
    client = await make_sandbox(pacing_seconds=0.2)
    hook = await make_hook()
    run = start_scenario(sb_of(client), "calm", hook.url)
    await wait_for(lambda: "call.answered" in hook.events(), what="call.answered")
    resp = await client.delete(f"{API}/calls/{run.call_id}", headers=AUTH)
    assert resp.status == 200
    await run.task
    assert hook.events()[-1] == "call.completed"
    assert hook.events().count("transcription.updated") < 3
    assert payloads(hook)[-1]["data"]["duration"] == (await resp.json())["duration"]


# End to end with the real receiver on a real Redis.


async def test_scenario_events_reach_the_real_receiver(
    make_sandbox, receiver, redis_client, settings
):
    client = await make_sandbox()
    url = str(receiver.make_url(RECEIVER_PATH))
    sb = sb_of(client)
    await play_scenario(sb, "low_balance", url)
    deliveries = sb.emitter.deliveries
    assert [d.event for d in deliveries][-2:] == ["call.completed", "balance.low"]
    assert [a.status for d in deliveries for a in d.attempts] == [202] * len(deliveries)
    queued = await redis_client.zrange(settings.queue_name, 0, -1)
    assert sorted(q.decode() for q in queued) == sorted(d.delivery_id for d in deliveries)


async def test_a_redelivery_after_a_forced_503_is_byte_identical_and_accepted(
    make_sandbox, make_hook, receiver
):
    hook = await make_hook(statuses=[503], forward_to=str(receiver.make_url(RECEIVER_PATH)))
    client = await make_sandbox()
    sb = sb_of(client)
    sb.emitter.config.duplicate = True
    record = await sb.emit("call.answered", {"call_id": "c1", "session_id": "s1"}, [Sink(hook.url)])
    # First copy: 503 then 202 from the receiver; the duplicate copy: 200 duplicate.
    assert hook.answers == [503, 202, 200]
    assert hook.bodies == [record.body] * 3
    assert len({h[signature.HEADER] for h in hook.headers}) == 1
    first, dup = record.deliveries
    assert [a.status for a in first.attempts] == [503, 202]
    assert [a.status for a in dup.attempts] == [200]
    assert first.delivery_id == delivery_id(record.body)


# Serving.


async def test_start_sandbox_serves_on_a_free_port():
    running = await start_sandbox(make_config())
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                running.api_url + "/sessions/create", json={}, headers=AUTH
            ) as resp:
                assert resp.status == 200
                sid = (await resp.json())["session_id"]
        assert sid in running.sandbox.state.sessions
    finally:
        await running.close()


async def test_run_sandbox_serves_until_cancelled():
    port = free_port()
    task = asyncio.create_task(run_sandbox(make_config(), "127.0.0.1", port))

    async def healthy() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/_sandbox/health") as resp,
            ):
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(healthy, what="the sandbox to serve")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not await healthy()


def test_config_from_settings_points_at_this_machines_receiver(settings):
    config = config_from_settings(settings, pacing_seconds=0.5)
    assert config.webhook_secret == SECRET  # the current secret of a rotation pair
    assert config.receiver_url == f"http://127.0.0.1:{settings.port}{settings.webhook_path}"
    assert config.pacing_seconds == 0.5
