"""RedisRateLimiter against the real Redis fixture: one budget shared by several processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import structlog
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from ringez_worker.api import RateLimitWaitExceeded, RedisRateLimiter
from ringez_worker.api.ratelimit import api_key_fingerprint
from ringez_worker.sandbox.redis_server import free_port

KEY = "rz:ratelimit:test"


@pytest.fixture
async def second_redis(redis_url: str) -> AsyncIterator[Redis]:
    """Another connection pool to the same server, as a second worker process would have."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_two_limiters_share_one_budget(redis_client: Redis, second_redis: Redis) -> None:
    a = RedisRateLimiter(redis_client, KEY, limit=5, period=1.0)
    b = RedisRateLimiter(second_redis, KEY, limit=5, period=1.0)
    waits = await asyncio.gather(*(lim.try_acquire() for lim in [a, b] * 6))
    granted = [w for w in waits if w == 0]
    refused = [w for w in waits if w > 0]
    assert len(granted) == 5
    assert len(refused) == 7
    assert all(w <= 1.0 for w in refused)
    assert await redis_client.zcard(KEY) == 5


async def test_acquire_waits_for_the_window_to_slide(
    redis_client: Redis, second_redis: Redis
) -> None:
    a = RedisRateLimiter(redis_client, KEY, limit=5, period=1.0, max_wait=30)
    b = RedisRateLimiter(second_redis, KEY, limit=5, period=1.0, max_wait=30)
    started = time.monotonic()
    await asyncio.gather(*(lim.acquire() for lim in [a, b] * 6))
    elapsed = time.monotonic() - started
    # 12 grants at 5 per second: the 11th cannot come before the 1st plus two windows. A
    # lower bound only; a slow machine makes this longer, never shorter.
    assert elapsed >= 1.9


async def test_wait_longer_than_max_wait_raises_without_sleeping(redis_client: Redis) -> None:
    limiter = RedisRateLimiter(redis_client, KEY, limit=2, period=3600, max_wait=1.0)
    await limiter.acquire()
    await limiter.acquire()
    with pytest.raises(RateLimitWaitExceeded) as caught:
        await limiter.acquire()
    assert caught.value.retryable
    assert caught.value.retry_after is not None and caught.value.retry_after > 3500
    assert await redis_client.zcard(KEY) == 2


async def test_a_slot_frees_once_its_grant_leaves_the_window(redis_client: Redis) -> None:
    limiter = RedisRateLimiter(redis_client, KEY, limit=2, period=0.3)
    assert [await limiter.try_acquire() for _ in range(3)][:2] == [0.0, 0.0]
    deadline = time.monotonic() + 10
    while await limiter.try_acquire() != 0.0:
        assert time.monotonic() < deadline, "no slot freed within 10 s"
        await asyncio.sleep(0.02)


async def test_budget_key_expires_with_the_window(redis_client: Redis) -> None:
    limiter = RedisRateLimiter(redis_client, KEY, limit=3, period=60)
    await limiter.acquire()
    assert 0 < await redis_client.pttl(KEY) <= 60_000


async def test_per_api_key_budgets_are_separate_and_hashed(redis_client: Redis) -> None:
    raw = "sk_live_do_not_store_me"
    first = RedisRateLimiter.for_api_key(redis_client, raw, limit=1, period=60, max_wait=0)
    again = RedisRateLimiter.for_api_key(redis_client, SecretStr(raw), limit=1, period=60)
    other = RedisRateLimiter.for_api_key(redis_client, "sk_live_another", limit=1, period=60)
    assert first.key == again.key == f"rz:ratelimit:ringez:{api_key_fingerprint(raw)}"
    assert raw not in first.key and raw not in repr(first)
    assert other.key != first.key

    await first.acquire()
    assert await again.try_acquire() > 0  # same key, same budget
    assert await other.try_acquire() == 0  # another key has its own
    stored = [k.decode() for k in await redis_client.keys("*")]
    assert not [k for k in stored if raw in k]


async def test_redis_down_fails_open_or_closed_as_configured() -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        with structlog.testing.capture_logs() as logs:
            await RedisRateLimiter(dead, KEY, limit=1, period=1).acquire()
        assert [e["event"] for e in logs] == ["ringez.ratelimit.unavailable"]
        with pytest.raises(RedisConnectionError):
            await RedisRateLimiter(dead, KEY, limit=1, period=1, fail_open=False).acquire()
    finally:
        await dead.aclose()


async def test_rejects_nonsense_limits(redis_client: Redis) -> None:
    with pytest.raises(ValueError):
        RedisRateLimiter(redis_client, KEY, limit=0)
    with pytest.raises(ValueError):
        RedisRateLimiter(redis_client, KEY, period=0)


async def test_a_pause_holds_every_limiter_and_is_never_shortened(
    redis_client: Redis, second_redis: Redis
) -> None:
    a = RedisRateLimiter(redis_client, KEY, limit=100, period=1.0, max_wait=0)
    b = RedisRateLimiter(second_redis, KEY, limit=100, period=1.0, max_wait=0)
    await a.pause(3600, "429 from GET /wallet/balance")
    await a.pause(5)  # a shorter 429 after it must not cut the first one's wait
    assert 3590 < await b.paused_for() <= 3600
    with pytest.raises(RateLimitWaitExceeded) as held:
        await b.acquire()
    assert held.value.retry_after > 3590
    # Nothing was taken from the budget while paused.
    assert await redis_client.zcard(KEY) == 0
