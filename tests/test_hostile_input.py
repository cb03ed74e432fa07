"""Hostile input: every request gets a specific status, nothing bad is enqueued, the
receiver stays healthy; and a property over arbitrary bodies and headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ringez_worker import signature
from ringez_worker.settings import Settings
from ringez_worker.worker.envelope import delivery_id
from ringez_worker.worker.receiver import create_app
from tests.conftest import (
    OLD_SECRET,
    SECRET,
    event_body,
    make_settings,
    serve_receiver,
    signed_headers,
)

PATH = "/webhooks/ringez"


@pytest.fixture(params=["lane", "aiohttp"])
async def receiver(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[TestClient]:
    """Every answer here is pinned for both ways in: the socket lane and aiohttp's server."""
    async with serve_receiver(settings, request.param) as client:
        yield client


async def test_a_secret_rotated_out_no_longer_works(redis_url, redis_client):
    settings = make_settings(redis_url, ringez_webhook_secret=SECRET)  # OLD_SECRET dropped
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        body = event_body()
        resp = await client.post(PATH, data=body, headers=signed_headers(body, OLD_SECRET))
        assert resp.status == 401
        assert (await resp.json())["error"] == "invalid_signature"
        assert await redis_client.dbsize() == 0
    finally:
        await client.close()


async def test_truncated_and_deeply_nested_bodies(receiver, redis_client):
    whole = event_body()
    cut = whole[: len(whole) // 2]
    resp = await receiver.post(PATH, data=cut, headers=signed_headers(cut))
    assert (resp.status, (await resp.json())["error"]) == (400, "invalid_json")
    # Signed for the whole body, but only half arrives: the signature cannot match.
    resp = await receiver.post(PATH, data=cut, headers=signed_headers(whole))
    assert (resp.status, (await resp.json())["error"]) == (401, "invalid_signature")

    for depth, code in ((100, "too_deep"), (5000, "invalid_json")):
        deep = b'{"event":"x","data":{"a":' + b"[" * depth + b"]" * depth + b"}}"
        resp = await receiver.post(PATH, data=deep, headers=signed_headers(deep))
        assert (resp.status, (await resp.json())["error"]) == (400, code)
    assert await redis_client.dbsize() == 0


async def test_a_stalled_body_times_out_with_408(redis_url, redis_client):
    settings = make_settings(redis_url, body_read_timeout_seconds=0.3)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        body = event_body()
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{signature.HEADER}: {signature.sign(body, SECRET)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(head + body[:10])  # then nothing more
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
        writer.close()
        assert b" 408 " in status_line
        assert await redis_client.dbsize() == 0
    finally:
        await client.close()


async def test_a_flood_from_one_client_leaves_the_receiver_healthy(receiver, redis_client):
    body = event_body()
    bad = {signature.HEADER: "0" * 64}

    async def hit(i: int) -> int:
        resp = await receiver.post(PATH, data=body + b" " * (i % 7), headers=bad)
        await resp.read()
        return resp.status

    statuses = []
    for _ in range(5):
        statuses += await asyncio.gather(*(hit(i) for i in range(400)))
    assert set(statuses) == {401}
    # Nothing but the console's per-minute rejection counter (flushed once a second; a
    # loaded run takes longer than that) reached Redis.
    assert {k.decode().split(":")[1] for k in await redis_client.keys("*")} <= {"stats"}
    assert (await receiver.get("/healthz")).status == 200
    good = await receiver.post(PATH, data=body, headers=signed_headers(body))
    assert good.status == 202


# --- the property -------------------------------------------------------------

event_payloads = st.fixed_dictionaries(
    {
        "event": st.one_of(st.sampled_from(["call.completed", "balance.low"]), st.text()),
        "timestamp": st.one_of(st.just("__NOW__"), st.text(max_size=30)),
        "data": st.one_of(
            st.dictionaries(
                st.text(max_size=10), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
            ),
            st.integers(-(2**63), 2**63 - 1),
        ),
    },
    optional={"extra": st.text(max_size=50)},
)


def realistic(payload: dict) -> bytes:
    body = orjson.dumps(payload)
    now = orjson.loads(event_body())["timestamp"]
    return body.replace(b"__NOW__", now.encode())


bodies = st.one_of(st.binary(max_size=600), event_payloads.map(realistic))
signatures = st.one_of(
    st.just("valid"),
    st.just("valid-upper"),
    st.just("old-secret"),
    st.none(),
    st.text(max_size=80),
)
content_types = st.sampled_from(
    [None, "application/json", "text/plain", "application/x-www-form-urlencoded", "bogus"]
)


def test_any_body_and_header_enqueues_that_body_once_or_nothing(redis_server):
    """For any bytes and any header: 2xx and exactly that body queued once, or 4xx/5xx and
    nothing queued."""
    loop = asyncio.new_event_loop()
    settings = make_settings(redis_server.url)
    client = TestClient(TestServer(create_app(settings)), loop=loop)
    loop.run_until_complete(client.start_server())
    sync = redis.Redis.from_url(redis_server.url)

    @hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies, sig=signatures, ctype=content_types, repeat=st.booleans())
    def check(body: bytes, sig: str | None, ctype: str | None, repeat: bool) -> None:
        sync.flushdb()
        headers: dict[str, str] = {}
        if sig == "valid":
            headers[signature.HEADER] = signature.sign(body, SECRET)
        elif sig == "valid-upper":
            headers[signature.HEADER] = signature.sign(body, SECRET).upper()
        elif sig == "old-secret":
            headers[signature.HEADER] = signature.sign(body, OLD_SECRET)
        elif sig is not None:
            headers[signature.HEADER] = "".join(c for c in sig if c.isprintable() and c != "\n")
        if ctype:
            headers["Content-Type"] = ctype

        async def post() -> int:
            resp = await client.post(PATH, data=body, headers=headers)
            payload = await resp.json()
            assert ("error" in payload) == (resp.status >= 400)
            return resp.status

        statuses = [loop.run_until_complete(post()) for _ in range(2 if repeat else 1)]
        queued = sync.zrange(settings.queue_name, 0, -1)
        if statuses[0] < 300:
            assert statuses[0] == 202
            assert queued == [delivery_id(body).encode()]
            job = orjson.loads(sync.get(f"arq:job:{delivery_id(body)}"))
            assert job["a"][1].encode() == body
            assert statuses[1:] in ([], [200])
        else:
            assert 400 <= statuses[0] < 600
            assert queued == []
            # Nothing of the request is kept: at most the console's per-minute count of
            # rejections by reason, which the receiver flushes once a second on its own.
            kept = [k for k in sync.keys() if not k.startswith(b"rz:stats:")]
            assert kept == []

    try:
        check()
    finally:
        loop.run_until_complete(client.close())
        loop.close()
        sync.close()
