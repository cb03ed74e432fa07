"""The worker's hot path (issue 21): batch claim with the lease as the queue score,
renewal, and the batched end of jobs with their last completion records."""

from __future__ import annotations

import asyncio
import collections

import pytest
from redis.asyncio import Redis

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.jobs import job_bytes
from ringez_worker.sandbox.redis_server import RedisServer
from ringez_worker.worker.batch_worker import _CLAIM, _RENEW
from tests.conftest import event_body, make_settings, running_worker, wait_for

QUEUE = "ringez:queue"


def claim_args(now: int, deadline: int, want: int = 10) -> list[object]:
    return [now, deadline, want, want + 100, "arq:job:", "arq:in-progress:", "arq:retry:", 88400]


async def queue(redis: Redis, delivery: str, score: int, body: str = '{"event":"x"}') -> None:
    await redis.set(f"arq:job:{delivery}", job_bytes(delivery, body, score))
    await redis.zadd(QUEUE, {delivery: score})


async def test_a_claim_moves_the_score_to_the_lease_and_counts_the_try(redis_client):
    await queue(redis_client, "a", 1000)
    claimed = await _CLAIM(redis_client, [QUEUE], claim_args(2000, 9000))
    assert claimed[0] == b"a" and int(claimed[1]) == 1000 and claimed[3] == 1
    assert claimed[2] == await redis_client.get("arq:job:a")
    assert await redis_client.zscore(QUEUE, "a") == 9000  # not due while the lease holds
    assert await redis_client.get("arq:retry:a") == b"1"
    assert 0 < await redis_client.ttl("arq:retry:a") <= 88400
    # Nothing due until the lease runs out; then claimed again, as try 2.
    assert await _CLAIM(redis_client, [QUEUE], claim_args(8999, 20000)) == []
    again = await _CLAIM(redis_client, [QUEUE], claim_args(9000, 20000))
    assert again[0] == b"a" and again[3] == 2


async def test_a_claim_skips_jobs_that_plain_arq_runs(redis_client):
    # A rolling upgrade: an arq / older worker holds `b` by its in-progress key.
    await queue(redis_client, "b", 1000)
    await queue(redis_client, "c", 1001)
    await redis_client.set("arq:in-progress:b", "1", px=60_000)
    claimed = await _CLAIM(redis_client, [QUEUE], claim_args(2000, 9000))
    assert claimed[0::4] == [b"c"]
    assert await redis_client.zscore(QUEUE, "b") == 1000  # untouched
    assert await redis_client.get("arq:retry:b") is None


async def test_renewal_moves_only_this_workers_own_leases(redis_client):
    await redis_client.zadd(QUEUE, {"mine": 5000, "retried": 7000})
    # `retried` was re-queued (another score) after this worker's lease at 5000.
    renewed = await _RENEW(
        redis_client, [QUEUE], [8000, "mine", 5000, "retried", 5000, "gone", 5000]
    )
    assert renewed == 1
    assert await redis_client.zscore(QUEUE, "mine") == 8000
    assert await redis_client.zscore(QUEUE, "retried") == 7000
    assert await redis_client.zscore(QUEUE, "gone") is None


async def test_renewal_goes_through_on_a_full_redis():
    # noeviction refuses ZADD; a lease that lapsed there would let a second worker run
    # the job (PEXPIRE on arq's in-progress key, the lease before, is never refused).
    server = RedisServer(extra_args=["--maxmemory-policy", "noeviction"]).start()
    client = Redis.from_url(server.url)
    try:
        await client.zadd(QUEUE, {"a": 5000})
        await client.config_set("maxmemory", 1)
        assert await _RENEW(client, [QUEUE], [9000, "a", 5000]) == 1
        await client.config_set("maxmemory", 0)
        assert await client.zscore(QUEUE, "a") == 9000
    finally:
        await client.aclose()
        server.cleanup()


@pytest.mark.parametrize("handlers", [1, 3])
async def test_jobs_end_in_batches_with_every_completion_record(redis_url, redis_client, handlers):
    settings = make_settings(redis_url, worker_max_jobs=50)
    runs: collections.Counter[str] = collections.Counter()
    router = Router()
    for n in range(handlers):

        async def handler(event: Event, ctx: Context, n: int = n) -> None:
            runs[f"{ctx.delivery_id}:{n}"] += 1
            await asyncio.sleep(0.001 * n)

        router.on("call.completed", name=f"h{n}")(handler)
    now = 1000
    ids = [f"{i:034x}" for i in range(300)]
    async with redis_client.pipeline(transaction=False) as pipe:
        for delivery in ids:
            body = event_body(call_id=delivery).decode()
            pipe.set(f"arq:job:{delivery}", job_bytes(delivery, body, now))
            pipe.zadd(QUEUE, {delivery: now})
        await pipe.execute()
    await redis_client.config_resetstat()
    async with running_worker(settings, router):

        async def drained() -> bool:
            return await redis_client.zcard(QUEUE) == 0

        await wait_for(drained, deadline_s=30, what="the queue to drain")
    assert set(runs.values()) == {1} and len(runs) == len(ids) * handlers
    for delivery in ids[::37]:
        done = await redis_client.hkeys(f"rz:done:{delivery}")
        assert len(done) == handlers
        assert 0 < await redis_client.ttl(f"rz:done:{delivery}") <= settings.done_record_ttl_seconds
        assert not await redis_client.exists(f"arq:job:{delivery}", f"arq:retry:{delivery}")
    assert await redis_client.xlen("rz:log") == len(ids) * handlers
    stats = await redis_client.info("commandstats")
    finishes = stats["cmdstat_zrem"]["calls"]
    assert finishes < len(ids) / 3  # ended in batches, not one call per job
