"""Redis refusing writes mid-dispatch (a full Redis under noeviction): retried, never dropped."""

from __future__ import annotations

import asyncio
import collections

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.sandbox.redis_server import RedisServer
from ringez_worker.worker.envelope import delivery_id
from ringez_worker.worker.receiver import create_app
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for

PATH = "/webhooks/ringez"


@pytest.fixture
async def full_redis():
    """Its own server with noeviction, so a test can fill it (`maxmemory 1`) and free it."""
    server = RedisServer(extra_args=["--maxmemory-policy", "noeviction"]).start()
    client = Redis.from_url(server.url)
    yield server, client
    await client.aclose()
    server.cleanup()


async def oom_errors(client: Redis) -> int:
    """How many commands Redis has refused with OOM (its own error statistics)."""
    stats = await client.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


async def post(client: TestClient, body: bytes) -> int:
    return (await client.post(PATH, data=body, headers=signed_headers(body))).status


async def test_a_refused_completion_write_retries_the_failed_sibling(full_redis):
    # Before the fix, the refused HSET of `slow`'s completion record escaped gather, arq
    # deleted the job (DEL and ZREM still work on a full Redis), and `flaky`, which had
    # failed, was never tried again: no retry, no failed-events record.
    server, client = full_redis
    settings = make_settings(server.url, job_lease_seconds=0.3, job_max_tries=5)
    runs: collections.Counter[str] = collections.Counter()
    slow_started = asyncio.Event()
    release = asyncio.Event()
    router = Router()

    @router.on("call.completed")
    async def flaky(event: Event, ctx: Context) -> None:
        runs["flaky"] += 1
        if runs["flaky"] == 1:
            raise RuntimeError("downstream is down")

    @router.on("call.completed")
    async def slow(event: Event, ctx: Context) -> None:
        runs["slow"] += 1
        slow_started.set()
        await release.wait()

    receiver = TestClient(TestServer(create_app(settings)))
    await receiver.start_server()
    body = event_body()
    did = delivery_id(body)
    try:
        async with running_worker(settings, router):
            assert await post(receiver, body) == 202
            await wait_for(slow_started.is_set, what="the slow handler to start")
            await wait_for(lambda: runs["flaky"] == 1, what="the flaky handler to fail")
            refused_before = await oom_errors(client)
            await client.config_set("maxmemory", 1)  # every write from now on is refused
            release.set()

            async def write_refused() -> bool:
                return await oom_errors(client) > refused_before

            await wait_for(write_refused, what="the completion write to be refused")
            await client.config_set("maxmemory", 0)

            async def finished() -> bool:
                return runs["flaky"] >= 2 and await client.zcard(settings.queue_name) == 0

            await wait_for(finished, deadline_s=20, what="the delivery to be retried and finish")
        assert await client.hget("rz:failed", did) is None
        done = {name.decode() for name in await client.hkeys(f"rz:done:{did}")}
        assert {name.split("@")[0].split(".")[-1] for name in done} == {"flaky", "slow"}
    finally:
        await receiver.close()
