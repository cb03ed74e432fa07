"""The failed-events record is capped and expires: the oldest records leave first, and
every one that leaves is counted in /metrics (FAILED_MAX_RECORDS, FAILED_RETENTION_SECONDS)."""

from __future__ import annotations

import time

import aiohttp

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.keys import Keys
from ringez_worker.sandbox.redis_server import free_port
from ringez_worker.worker import failed
from ringez_worker.worker.envelope import delivery_id
from ringez_worker.worker.health import start_worker_http
from ringez_worker.worker.metrics import WorkerMetrics
from ringez_worker.worker.retention import sweep
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for

PATH = "/webhooks/ringez"


class Permanent(Exception):
    retryable = False


def broken_router() -> Router:
    router = Router()

    @router.on("call.completed")
    async def broken(event: Event, ctx: Context) -> None:
        raise Permanent("no")

    return router


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return await resp.text()


async def test_cap_drops_the_oldest_first_and_counts_them(receiver, redis_url, redis_client):
    settings = make_settings(redis_url, failed_max_records=3, job_max_tries=1)
    keys = Keys()
    ids = []
    async with running_worker(settings, broken_router()):
        for n in range(5):
            body = event_body(call_id=f"call_cap_{n}")
            ids.append(delivery_id(body))
            resp = await receiver.post(PATH, data=body, headers=signed_headers(body))
            assert resp.status == 202

            async def recorded(did: str = ids[-1]) -> bool:
                return bool(await redis_client.hexists(keys.failed, did))

            await wait_for(recorded, what=f"failed record {n}")

    kept = {k.decode() for k in await redis_client.hkeys(keys.failed)}
    assert kept == set(ids[2:])
    assert await redis_client.zcard(keys.failed_age) == 3
    assert await failed.evicted(redis_client, keys) == {"retention": 0, "cap": 2}

    port = free_port()
    metrics_settings = make_settings(redis_url, worker_metrics_port=port, host="127.0.0.1")
    runner = await start_worker_http(metrics_settings, redis_client, keys, WorkerMetrics())
    assert runner is not None
    try:
        text = await scrape(port)
    finally:
        await runner.cleanup()
    assert 'ringez_failed_events_evicted_total{reason="cap"} 2.0' in text
    assert 'ringez_failed_events_evicted_total{reason="retention"} 0.0' in text
    assert "ringez_failed_events 3.0" in text


async def test_retention_sweep_removes_old_records_even_without_new_failures(
    redis_url, redis_client
):
    settings = make_settings(redis_url, failed_retention_seconds=60)
    keys = Keys()
    now = int(time.time() * 1000)
    for did in ("old", "fresh"):
        await failed.store(redis_client, keys, did, b"{}", retention_seconds=3600, max_records=100)
    # "old" failed two minutes ago, past the 60 s retention.
    await redis_client.zadd(keys.failed_age, {"old": now - 120_000})
    # A record an older version wrote has no age yet: it is given one, not dropped.
    await redis_client.hset(keys.failed, "legacy", b"{}")

    assert await sweep(redis_client, keys, settings) == (1, 0)
    assert {k.decode() for k in await redis_client.hkeys(keys.failed)} == {"fresh", "legacy"}
    assert await redis_client.zscore(keys.failed_age, "legacy") is not None
    assert await failed.evicted(redis_client, keys) == {"retention": 1, "cap": 0}
    assert await sweep(redis_client, keys, settings) == (0, 0)


async def test_purge_and_success_leave_no_age_entries(redis_url, redis_client):
    keys = Keys()
    for did in ("a", "b"):
        await failed.store(redis_client, keys, did, b"{}", retention_seconds=60, max_records=9)
    assert await failed.forget(redis_client, keys, "a") == 1
    assert await redis_client.zrange(keys.failed_age, 0, -1) == [b"b"]
    assert await failed.purge(redis_client, keys) == 1
    assert not await redis_client.exists(keys.failed, keys.failed_age)
