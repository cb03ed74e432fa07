"""Redis refusing writes mid-dispatch (a full Redis under noeviction): retried, never dropped."""

from __future__ import annotations

import asyncio
import collections
import contextlib

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.sandbox.redis_server import RedisServer, free_port
from ringez_worker.worker.app import create_worker
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


async def test_a_full_redis_makes_the_worker_wait_then_drain(full_redis):
    # Before the fix the claim script's OutOfMemoryError escaped the poll loop and the
    # worker exited (after every restart too), while both /readyz said 200.
    server, client = full_redis
    port = free_port()
    settings = make_settings(server.url, worker_metrics_port=port, host="127.0.0.1")
    runs: collections.Counter[str] = collections.Counter()
    router = Router()

    @router.on("call.completed")
    async def count(event: Event, ctx: Context) -> None:
        runs[event.data.call_id] += 1

    receiver = TestClient(TestServer(create_app(settings)))
    await receiver.start_server()
    try:
        for i in range(5):
            assert await post(receiver, event_body(call_id=f"full{i}")) == 202
        refused_before = await oom_errors(client)
        await client.config_set("maxmemory", 1)

        ready = await receiver.get("/readyz")
        assert ready.status == 503
        assert "maxmemory" in (await ready.json())["reason"]
        assert await post(receiver, event_body(call_id="refused")) == 503

        async with running_worker(settings, router), aiohttp.ClientSession() as http:

            async def claims_refused() -> bool:
                return await oom_errors(client) >= refused_before + 3

            await wait_for(claims_refused, what="the worker to try, and be refused, repeatedly")
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 503
                assert "maxmemory" in (await resp.json())["reason"]
            assert not runs

            await client.config_set("maxmemory", 0)

            async def drained() -> bool:
                return len(runs) == 5 and await client.zcard(settings.queue_name) == 0

            await wait_for(drained, deadline_s=20, what="the backlog to drain by itself")
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200
        assert (await receiver.get("/readyz")).status == 200
        assert set(runs.values()) == {1}
    finally:
        await receiver.close()


async def test_redis_gone_mid_dispatch_still_retries_the_failed_sibling():
    # Redis stops while a handler runs: its completion write and arq's own bookkeeping
    # both fail, the worker exits (as arq does), and a new worker must run the delivery
    # again once Redis is back: the failed sibling retried, nothing lost. (On main this
    # form survived by luck, arq's cleanup failing too; the refused write above is the
    # one that dropped the job.)
    server = RedisServer(appendonly=True).start()
    settings = make_settings(server.url, job_lease_seconds=0.3, redis_timeout_seconds=0.5)
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
        if runs["slow"] == 1:
            await release.wait()

    receiver = TestClient(TestServer(create_app(settings)))
    await receiver.start_server()
    client = Redis.from_url(server.url)
    first = create_worker(settings, router=router, handle_signals=False)
    first_task = asyncio.create_task(first.main())
    try:
        assert await post(receiver, event_body()) == 202
        await wait_for(slow_started.is_set, what="the slow handler to start")
        await wait_for(lambda: runs["flaky"] == 1, what="the flaky handler to fail")
        server.stop()  # SIGTERM: the AOF keeps the queued job
        release.set()
        await wait_for(first_task.done, deadline_s=20, what="the worker to lose Redis")
        with contextlib.suppress(Exception):
            await first.close()
        server.start()

        async with running_worker(settings, router):

            async def finished() -> bool:
                return runs["flaky"] >= 2 and await client.zcard(settings.queue_name) == 0

            await wait_for(finished, deadline_s=30, what="the delivery to finish after Redis")
        assert await client.hlen("rz:failed") == 0
    finally:
        first_task.cancel()
        with contextlib.suppress(BaseException):
            await first_task
        await client.aclose()
        await receiver.close()
        server.cleanup()
