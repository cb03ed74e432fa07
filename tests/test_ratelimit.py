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

from ringez_worker.api import Priority, RateLimitWaitExceeded, RedisRateLimiter
from ringez_worker.api.priority import default_priority
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


async def test_lower_classes_leave_the_last_of_the_window_to_live_actions(
    redis_client: Redis,
) -> None:
    # limit 10, reserve 20 %: live 10, dial 8, analysis 7, background 6.
    limiter = RedisRateLimiter(redis_client, KEY, limit=10, period=3600, reserve_live=0.2)
    assert limiter.ceilings == {
        Priority.LIVE: 10,
        Priority.DIAL: 8,
        Priority.ANALYSIS: 7,
        Priority.BACKGROUND: 6,
    }
    granted = {p: 0 for p in Priority}
    for p in sorted(Priority, reverse=True):  # the lowest class fills the window first
        while await limiter.try_acquire(p) == 0.0:
            granted[p] += 1
    assert granted == {
        Priority.BACKGROUND: 6,
        Priority.ANALYSIS: 1,
        Priority.DIAL: 1,
        Priority.LIVE: 2,
    }
    assert await limiter.used() == 10 and await limiter.left_fraction() == 0.0


async def test_a_lower_class_waits_for_enough_grants_to_leave(redis_client: Redis) -> None:
    limiter = RedisRateLimiter(redis_client, KEY, limit=10, period=2.0, reserve_live=0.2)
    # A full window: one grant 1.5 s old, nine 0.1 s old (on the Redis clock, as the
    # script's own grants are).
    seconds, micros = await redis_client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    await redis_client.zadd(
        KEY, {"old": now_ms - 1500, **{f"new{i}": now_ms - 100 for i in range(9)}}
    )
    # Live needs one grant to leave (the old one, in ~0.5 s); background (ceiling 6) needs
    # five to leave, so it waits for the new ones (~1.9 s).
    live_wait = await limiter.try_acquire(Priority.LIVE)
    background_wait = await limiter.try_acquire(Priority.BACKGROUND)
    assert 0 < live_wait < 1.0 < background_wait <= 2.0


def test_default_classes_follow_the_issue_order() -> None:
    assert default_priority("POST", "/calls/c1/actions") is Priority.LIVE
    assert default_priority("DELETE", "/calls/c1") is Priority.LIVE
    assert default_priority("POST", "/calls/initiate") is Priority.DIAL
    assert default_priority("POST", "/agents/sentiment-analysis") is Priority.ANALYSIS
    assert default_priority("GET", "/calls/c1") is Priority.BACKGROUND
    assert default_priority("GET", "/transcripts/c1") is Priority.BACKGROUND
