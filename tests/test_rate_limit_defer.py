"""A 429 with a long Retry-After (issue 12, item 8): the job is deferred that long without
using a try, the whole account pauses for every client and worker, and past
RATE_LIMIT_MAX_DEFER_SECONDS the delivery is recorded as failed. Real receiver, two
workers, Redis, and the sandbox as Ringez answering 429; no sleeping: the deferral is
read from the job's score in the queue's sorted set."""

from __future__ import annotations

import time

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ringez_worker.api import RateLimited, RateLimitWaitExceeded, RingezClient
from ringez_worker.api.ratelimit import api_key_fingerprint
from ringez_worker.handlers import Router
from ringez_worker.sandbox import REQUEST_LOG
from ringez_worker.sandbox.config import FaultConfig
from ringez_worker.worker.cli import post_webhook
from ringez_worker.worker.envelope import delivery_id
from ringez_worker.worker.receiver import create_app
from tests.agent_stack import agent_stack
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for
from tests.test_agents import _segment_on_a_live_call, low_balance_event

pytestmark = pytest.mark.timeout(60)

HOUR = 3600
# One 429 asking for an hour, on the first wallet read.
AN_HOUR_429 = FaultConfig(
    fail_next=[429], retry_after_seconds=HOUR, path_prefix="/api/v1/wallet/balance"
)


def api_requests(stack) -> list[dict]:
    return [e for e in stack.sandbox.app[REQUEST_LOG] if e["path"].startswith("/api/v1/")]


async def deferred_about(redis: Redis, where, job_id: str, seconds: float) -> bool:
    """The job is back in the queue, due about `seconds` from now (not before).

    `where`: the stack, or the settings, whose queue to look in."""
    queue = getattr(where, "settings", where).queue_name
    score = await redis.zscore(queue, job_id)
    now_ms = time.time() * 1000
    return score is not None and now_ms + (seconds - 60) * 1000 < score <= now_ms + seconds * 1000


async def post(stack, body: bytes) -> str:
    status, _ = await post_webhook(stack.receiver_url, body, stack.settings.webhook_secrets[0])
    assert status == 202
    return delivery_id(body)


async def test_a_long_retry_after_defers_the_job_and_pauses_the_account(redis_url, redis_client):
    async with agent_stack(redis_url, workers=2, job_max_tries=2) as stack:
        stack.sandbox.sandbox.faults.configure(AN_HOUR_429)
        session = stack.sandbox.sandbox.state.create_session(initial_minutes=1)
        did = await post(stack, low_balance_event(session.session_id, 1, 0))

        async def deferred() -> bool:
            return await deferred_about(redis_client, stack, did, HOUR)

        await wait_for(deferred, what="the job deferred by the Retry-After")
        assert await redis_client.get(f"arq:retry:{did}") == b"1"  # no try used up
        assert not await redis_client.hexists("rz:failed", did)
        assert len(api_requests(stack)) == 1  # the one 429: no retries hammering it

        # The account is paused in the shared limiter: another client (another process,
        # its own Redis connection) is held back without sending anything.
        pause_key = f"rz:ratelimit:ringez:{api_key_fingerprint('sk_test_agents')}:pause"
        assert await redis_client.pttl(pause_key) > (HOUR - 60) * 1000
        async with Redis.from_url(redis_url) as other_redis:
            other = RingezClient.from_settings(stack.settings, redis=other_redis)
            try:
                with pytest.raises(RateLimitWaitExceeded) as held:
                    await other.wallet.balance(session.session_id)
            finally:
                await other.aclose()
        assert held.value.retry_after > HOUR - 60

        # Other handlers, on whichever worker takes them, defer the same way.
        _, segment = _segment_on_a_live_call(stack, "What is my balance?")
        other_did = await post(stack, segment)

        async def also_deferred() -> bool:
            return await deferred_about(redis_client, stack, other_did, HOUR)

        await wait_for(also_deferred, what="a second delivery deferred by the pause")
        assert len(api_requests(stack)) == 1, [e["path"] for e in api_requests(stack)]
        assert await redis_client.get(f"arq:retry:{other_did}") == b"1"


async def test_deferrals_use_no_tries_until_the_max_defer_lands_in_the_failed_record(
    redis_url, redis_client
):
    # Two tries allowed, four deferrals of an hour fit under the cap, the fifth does not.
    async with agent_stack(
        redis_url, job_max_tries=2, rate_limit_max_defer_seconds=15_000
    ) as stack:
        stack.sandbox.sandbox.faults.configure(AN_HOUR_429)
        session = stack.sandbox.sandbox.state.create_session(initial_minutes=1)
        did = await post(stack, low_balance_event(session.session_id, 1, 0))
        queue = stack.settings.queue_name

        for n in range(1, 5):

            async def deferred(n: int = n) -> bool:
                count = await redis_client.hget(f"rz:deferrals:{did}", "count")
                return int(count or 0) == n and await deferred_about(redis_client, stack, did, HOUR)

            await wait_for(deferred, what=f"deferral {n}")
            assert await redis_client.get(f"arq:retry:{did}") == b"1"
            assert not await redis_client.hexists("rz:failed", did)
            # Due now instead of in an hour (the pause still holds): run it again.
            await redis_client.zadd(queue, {did: int(time.time() * 1000)})

        async def recorded() -> bool:
            return await redis_client.hexists("rz:failed", did)

        await wait_for(recorded, what="the failed-events record past the max defer")
        record = orjson.loads(await redis_client.hget("rz:failed", did))
        assert record["attempts"] == 1
        (reason,) = record["handlers"].values()
        assert "RateLimit" in reason and "RATE_LIMIT_MAX_DEFER_SECONDS" in reason
        await wait_for(lambda: queue_gone(redis_client, queue, did), what="the job to end")
        # One request reached the API (the 429); the pause kept the other runs off it.
        assert len(api_requests(stack)) == 1
        assert stack.charges(session.session_id) == []


async def queue_gone(redis_client: Redis, queue: str, job_id: str) -> bool:
    return await redis_client.zscore(queue, job_id) is None


async def test_a_deferred_job_keeps_its_tries_and_reruns_only_the_limited_handler(
    redis_url, redis_client
):
    # One handler succeeds on the first run; its sibling is rate-limited twice, then
    # fails once for an ordinary reason, then succeeds. With two tries allowed that only
    # works if the deferrals used none, and the sibling must never run again.
    settings = make_settings(redis_url, job_max_tries=2)
    router = Router()

    @router.on("call.completed", name="ok")
    async def ok(event, ctx) -> None:
        await ctx.redis.incr("t:ok")

    @router.on("call.completed", name="limited")
    async def limited(event, ctx) -> None:
        run = await ctx.redis.incr("t:limited")
        if run <= 2:
            raise RateLimited("429 from GET /x", retry_after=HOUR, status=429)
        if run == 3:
            raise ValueError("an ordinary failure, retried with backoff")

    body = event_body("call.completed", duration=5)
    did = delivery_id(body)
    async with running_worker(settings, router):
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        try:
            resp = await client.post("/webhooks/ringez", data=body, headers=signed_headers(body))
            assert resp.status == 202
        finally:
            await client.close()
        for n in (1, 2):

            async def deferred(n: int = n) -> bool:
                count = await redis_client.hget(f"rz:deferrals:{did}", "count")
                return int(count or 0) == n and await deferred_about(
                    redis_client, settings, did, HOUR
                )

            await wait_for(deferred, what=f"deferral {n}")
            await redis_client.zadd(settings.queue_name, {did: int(time.time() * 1000)})
        await wait_for(
            lambda: queue_gone(redis_client, settings.queue_name, did), what="the job to end"
        )
    assert int(await redis_client.get("t:limited")) == 4
    assert int(await redis_client.get("t:ok")) == 1
    assert not await redis_client.hexists("rz:failed", did)


async def test_a_429_on_a_dial_pauses_dialing_only(redis_url, redis_client):
    # bench/callback_chaos.py at 300 requests: the session's calls_per_hour answered the
    # 101st dial with 429 and an hour's Retry-After, the account paused, and every live
    # transfer waited the hour behind it. A 429 on a dial now pauses the DIAL class only.
    from ringez_worker.api import Priority
    from ringez_worker.sandbox import SandboxConfig, start_sandbox

    sandbox = await start_sandbox(SandboxConfig(calls_per_hour=1, pacing_seconds=0.05))
    settings = make_settings(
        redis_url, ringez_api_url=sandbox.api_url, ringez_api_key="sk_test_dials"
    )
    client = RingezClient.from_settings(settings, redis=redis_client)
    dial = client.with_priority(Priority.DIAL).calls
    try:
        session = sandbox.sandbox.state.create_session(initial_minutes=60).session_id
        first = await dial.initiate(
            session_id=session, to_number="+14155550101", idempotency_key="d1"
        )
        with pytest.raises(RateLimited):
            await dial.initiate(session_id=session, to_number="+14155550102", idempotency_key="d2")
        limiter = client.rate_limiter
        assert limiter is not None
        assert await limiter.paused_for(Priority.DIAL) > HOUR - 60
        assert await limiter.paused_for() == 0  # the account is not paused
        sent = len(sandbox.app[REQUEST_LOG])
        with pytest.raises(RateLimitWaitExceeded):  # a third dial is held, not sent
            await dial.initiate(session_id=session, to_number="+14155550103", idempotency_key="d3")
        assert len(sandbox.app[REQUEST_LOG]) == sent

        async def answered() -> bool:
            return (await client.calls.get(first.call_id)).status == "in-progress"

        await wait_for(answered, what="the first call answered")  # a BACKGROUND read goes out
        await client.with_priority(Priority.LIVE).calls.transfer(first.call_id, "+14155550900")
        call = sandbox.sandbox.state.calls[first.call_id]
        assert call.transferred_to == "+14155550900"
    finally:
        await client.aclose()
        await sandbox.close()
