"""Worker processes killed or stopped in the middle of a job, on a real Redis."""

from __future__ import annotations

import signal

from tests.conftest import event_body, signed_headers, wait_for
from tests.processes import Proc

PATH = "/webhooks/ringez"


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "RINGEZ_HANDLERS": "tests.crash_handlers",
        "JOB_LEASE_SECONDS": "1",
        "WORKER_METRICS_PORT": "0",
        "RETRY_BACKOFF_SECONDS": "0.05",
        **extra,
    }


def counter(redis_client, key: str):
    async def read() -> int:
        return int(await redis_client.get(key) or 0)

    return read


def at_least(read, n: int):
    async def check() -> bool:
        return await read() >= n

    return check


async def test_sigkill_mid_job_reruns_only_what_had_not_finished(receiver, redis_url, redis_client):
    env = worker_env(redis_url)
    quick = counter(redis_client, "t:quick:k1")
    slow_started = counter(redis_client, "t:slow_started:k1")
    slow_done = counter(redis_client, "t:slow_done:k1")

    first = Proc("worker", env=env)
    second = None
    try:
        first.wait_for_line("worker.started")
        body = event_body(call_id="k1")
        assert (await receiver.post(PATH, data=body, headers=signed_headers(body))).status == 202
        await wait_for(at_least(slow_started, 1), what="the slow handler to start")
        await wait_for(at_least(quick, 1), what="the quick handler to finish")

        async def quick_recorded() -> bool:
            done = await redis_client.hkeys(f"rz:done:{receiver_delivery(body)}")
            return any(b"quick" in name for name in done)

        await wait_for(quick_recorded, what="the quick handler's completion record")
        first.stop(signal.SIGKILL)

        second = Proc("worker", env=env)
        await wait_for(at_least(slow_started, 2), deadline_s=30, what="another worker to take it")
        await redis_client.rpush("t:release:k1", "go")
        await wait_for(at_least(slow_done, 1), what="the slow handler to finish")

        async def queue_empty() -> bool:
            return await redis_client.zcard("ringez:queue") == 0

        await wait_for(queue_empty, what="the job to complete")
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            assert second.stop() == 0
    assert (await quick(), await slow_started(), await slow_done()) == (1, 2, 1)


async def test_sigterm_finishes_running_jobs_and_takes_no_new_ones(
    receiver, redis_url, redis_client
):
    env = worker_env(redis_url, SHUTDOWN_GRACE_SECONDS="30")
    slow_started = counter(redis_client, "t:slow_started:t1")
    slow_done = counter(redis_client, "t:slow_done:t1")

    proc = Proc("worker", env=env)
    try:
        proc.wait_for_line("worker.started")
        body = event_body(call_id="t1")
        assert (await receiver.post(PATH, data=body, headers=signed_headers(body))).status == 202
        await wait_for(at_least(slow_started, 1), what="the slow handler to start")

        proc.popen.send_signal(signal.SIGTERM)
        proc.wait_for_line("worker.stopping")
        # Sent after the signal: this worker must leave it for another.
        later = event_body(call_id="t2")
        assert (await receiver.post(PATH, data=later, headers=signed_headers(later))).status == 202

        await redis_client.rpush("t:release:t1", "go")
        await wait_for(at_least(slow_done, 1), what="the running job to finish")
        assert proc.stop(deadline_s=30) == 0
    finally:
        proc.stop(signal.SIGKILL)
    assert await slow_done() == 1
    assert int(await redis_client.get("t:quick:t2") or 0) == 0
    assert await redis_client.zscore("ringez:queue", receiver_delivery(later)) is not None


def receiver_delivery(body: bytes) -> str:
    from ringez_worker.worker.envelope import delivery_id

    return delivery_id(body)


async def test_the_worker_outlives_a_redis_restart():
    from redis.asyncio import Redis

    from ringez_worker.keys import Keys
    from ringez_worker.sandbox.redis_server import RedisServer
    from ringez_worker.worker.queue import EventQueue

    server = RedisServer(appendonly=True).start()
    proc = Proc("worker", env=worker_env(server.url))
    client = Redis.from_url(server.url)
    try:
        proc.wait_for_line("worker.started")
        keys = Keys()

        async def send(call_id: str) -> None:
            queue = EventQueue(client, keys, dedupe_ttl_ms=60_000, job_ttl_ms=60_000)
            body = event_body(call_id=call_id)
            assert await queue.enqueue(receiver_delivery(body), body)
            await client.rpush(f"t:release:{call_id}", "go")

        await send("r1")
        await wait_for(at_least(counter(client, "t:slow_done:r1"), 1), what="first event")

        server.kill()
        proc.wait_for_line("worker.redis_lost")
        server.start()
        await client.connection_pool.disconnect()

        await send("r2")
        await wait_for(
            at_least(counter(client, "t:slow_done:r2"), 1), deadline_s=30, what="after restart"
        )
    finally:
        proc.stop()
        await client.aclose()
        server.cleanup()
