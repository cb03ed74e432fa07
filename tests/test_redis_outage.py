"""Redis going away: 503 + Retry-After, nothing acknowledged that Redis does not hold, recovery."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ringez_worker.sandbox.redis_server import RedisServer
from ringez_worker.worker.envelope import delivery_id
from ringez_worker.worker.receiver import create_app
from tests.conftest import event_body, make_settings, signed_headers

PATH = "/webhooks/ringez"


@pytest.fixture
def own_redis():
    # Its own server, with AOF, so this test can kill and restart it.
    server = RedisServer(appendonly=True).start()
    yield server
    server.cleanup()


async def test_redis_killed_mid_run(own_redis):
    settings = make_settings(own_redis.url, redis_timeout_seconds=0.5)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        bodies = [event_body(call_id=f"c{i}") for i in range(300)]

        async def post(body: bytes):
            resp = await client.post(PATH, data=body, headers=signed_headers(body))
            return body, resp.status, resp.headers.get("Retry-After"), await resp.json()

        before = await asyncio.gather(*(post(b) for b in bodies[:50]))
        assert {status for _, status, _, _ in before} == {202}
        # Kill Redis while a burst is in flight.
        burst = [asyncio.create_task(post(b)) for b in bodies[50:]]
        await asyncio.wait(burst, return_when=asyncio.FIRST_COMPLETED)
        own_redis.kill()
        results = [*before, *await asyncio.gather(*burst)]

        acked = [b for b, status, _, _ in results if status in (200, 202)]
        refused = [(s, ra, p) for _, s, ra, p in results if s not in (200, 202)]
        assert refused, "requests after the kill must be refused"
        assert all(s == 503 and ra and p["error"] == "queue_unavailable" for s, ra, p in refused)

        own_redis.start()
        check = Redis.from_url(own_redis.url)
        try:
            queued = {m.decode() for m in await check.zrange(settings.queue_name, 0, -1)}
            missing = [b for b in acked if delivery_id(b) not in queued]
            assert not missing, f"{len(missing)} acknowledged events are not in Redis"
        finally:
            await check.aclose()

        # The receiver recovers by itself once Redis is back.
        body = event_body(call_id="after")
        resp = await client.post(PATH, data=body, headers=signed_headers(body))
        assert resp.status == 202
    finally:
        await client.close()


async def test_redis_down_from_the_start_answers_503(redis_server):
    from ringez_worker.sandbox.redis_server import free_port

    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0", redis_timeout_seconds=0.3)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        body = event_body()
        resp = await client.post(PATH, data=body, headers=signed_headers(body))
        assert resp.status == 503
        assert resp.headers["Retry-After"] == str(settings.retry_after_seconds)
        assert (await resp.json())["error"] == "queue_unavailable"
    finally:
        await client.close()
