"""The receiver against a real Redis: every bad input has its own answer and enqueues nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import orjson
import pytest
from aiohttp.test_utils import TestClient

from ringez_worker import signature
from ringez_worker.keys import BUCKET_MS, Keys
from ringez_worker.settings import Settings
from ringez_worker.worker.cli import build_event
from ringez_worker.worker.envelope import delivery_id
from tests.conftest import OLD_SECRET, SECRET, event_body, serve_receiver, signed_headers

PATH = "/webhooks/ringez"


@pytest.fixture(params=["lane", "aiohttp"])
async def receiver(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[TestClient]:
    """Every answer here is pinned for both ways in: the socket lane and aiohttp's server."""
    async with serve_receiver(settings, request.param) as client:
        yield client


async def queued(redis_client, settings) -> list[bytes]:
    return await redis_client.zrange(settings.queue_name, 0, -1)


async def test_a_new_event_is_queued_then_answered_202(receiver, redis_client, settings):
    body = event_body("call.answered", answered_at="2026-11-24T12:00:00Z")
    resp = await receiver.post(PATH, data=body, headers=signed_headers(body))
    assert resp.status == 202
    assert await resp.json() == {"received": True, "id": delivery_id(body)}
    assert await queued(redis_client, settings) == [delivery_id(body).encode()]
    job = orjson.loads(await redis_client.get(f"arq:job:{delivery_id(body)}"))
    assert job["f"] == "handle_event"
    assert job["a"][:2] == [delivery_id(body), body.decode()]


async def test_a_redelivery_is_200_duplicate_and_queues_nothing_more(
    receiver, redis_client, settings
):
    body = event_body()
    first = await receiver.post(PATH, data=body, headers=signed_headers(body))
    second = await receiver.post(PATH, data=body, headers=signed_headers(body))
    assert first.status == 202
    assert second.status == 200
    assert (await second.json())["duplicate"] is True
    assert len(await queued(redis_client, settings)) == 1


async def test_the_dedupe_record_outlives_the_job(receiver, redis_client, settings):
    body = event_body()
    await receiver.post(PATH, data=body, headers=signed_headers(body))
    # The worker deletes the job when done; the redelivery must still be caught.
    await redis_client.delete(f"arq:job:{delivery_id(body)}")
    await redis_client.zrem(settings.queue_name, delivery_id(body))
    resp = await receiver.post(PATH, data=body, headers=signed_headers(body))
    assert resp.status == 200
    assert await queued(redis_client, settings) == []
    stamp = orjson.loads(body)["timestamp"]
    event_ms = int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
    bucket, field = Keys().dedupe(delivery_id(body), event_ms)
    assert await redis_client.hexists(bucket, field)
    # The bucket lives until its newest possible timestamp is past the window.
    ttl = await redis_client.pttl(bucket)
    window_ms = (settings.dedupe_window_seconds + settings.clock_skew_seconds) * 1000
    assert window_ms - 60_000 < ttl <= window_ms + BUCKET_MS


async def test_rotated_secrets_and_uppercase_hex_are_accepted(receiver):
    body = event_body(call_id="c_old")
    resp = await receiver.post(PATH, data=body, headers=signed_headers(body, OLD_SECRET))
    assert resp.status == 202
    body = event_body(call_id="c_upper")
    headers = {signature.HEADER: signature.sign(body, SECRET).upper()}
    resp = await receiver.post(PATH, data=body, headers=headers)
    assert resp.status == 202


async def test_unknown_event_names_are_accepted(receiver, redis_client, settings):
    body = event_body("custom.thing")
    resp = await receiver.post(PATH, data=body, headers=signed_headers(body))
    assert resp.status == 202
    assert len(await queued(redis_client, settings)) == 1


def _sig(body: bytes) -> dict[str, str]:
    return signed_headers(body)


GOOD = event_body()
BAD_CASES = [
    ("no signature", GOOD, {"Content-Type": "application/json"}, 401, "missing_signature"),
    ("not hex", GOOD, {signature.HEADER: "sha256=" + "z" * 57}, 401, "malformed_signature"),
    ("short", GOOD, {signature.HEADER: "abc"}, 401, "malformed_signature"),
    ("wrong secret", GOOD, signed_headers(GOOD, "whsec_wrong"), 401, "invalid_signature"),
    ("other body", GOOD, _sig(GOOD + b" "), 401, "invalid_signature"),
    (
        "wrong content type",
        GOOD,
        {**_sig(GOOD), "Content-Type": "text/plain"},
        415,
        "unsupported_media_type",
    ),
    ("not json", b"{nope", _sig(b"{nope"), 400, "invalid_json"),
    ("not an object", b"[1]", _sig(b"[1]"), 400, "not_an_object"),
    (
        "no event",
        b'{"timestamp":"2030-01-01T00:00:00Z","data":{}}',
        _sig(b'{"timestamp":"2030-01-01T00:00:00Z","data":{}}'),
        422,
        "missing_event",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [c[1:] for c in BAD_CASES],
    ids=[c[0] for c in BAD_CASES],
)
async def test_bad_input_table(receiver, redis_client, settings, body, headers, status, code):
    resp = await receiver.post(PATH, data=body, headers=headers)
    assert resp.status == status
    assert resp.content_type == "application/json"
    payload = await resp.json()
    assert payload["error"] == code
    assert payload["message"]
    assert await redis_client.dbsize() == 0


def _now() -> str:
    return orjson.loads(build_event("x", {}))["timestamp"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"event": "call.answered", "timestamp": "now", "data": {}}, "invalid_timestamp"),
        ({"event": "call.answered", "data": {}}, "missing_timestamp"),
        ({"event": "call.answered", "timestamp": _now()}, "missing_data"),
        (
            {"event": "call.answered", "timestamp": "2020-01-01T00:00:00Z", "data": {}},
            "timestamp_expired",
        ),
        (
            {"event": "call.answered", "timestamp": "2999-01-01T00:00:00Z", "data": {}},
            "timestamp_in_future",
        ),
    ],
)
async def test_envelope_errors_are_422(receiver, redis_client, payload, code):
    body = orjson.dumps(payload)
    resp = await receiver.post(PATH, data=body, headers=signed_headers(body))
    assert resp.status == 422
    assert (await resp.json())["error"] == code
    assert await redis_client.dbsize() == 0


async def test_oversized_bodies_get_413(receiver, redis_client, settings):
    big = event_body(text="x" * (settings.max_body_bytes + 10))
    resp = await receiver.post(PATH, data=big, headers=signed_headers(big))
    assert resp.status == 413
    assert (await resp.json())["error"] == "body_too_large"

    async def chunks():
        yield big[:1000]
        yield big[1000:]

    # Chunked: no Content-Length to check up front, aiohttp's limit catches it.
    resp = await receiver.post(PATH, data=chunks(), headers=signed_headers(big))
    assert resp.status == 413
    assert (await resp.json())["error"] == "body_too_large"
    assert await redis_client.dbsize() == 0


async def test_other_methods_get_405(receiver):
    resp = await receiver.get(PATH)
    assert resp.status == 405
    assert (await resp.json())["error"] == "method_not_allowed"
