"""A request budget shared by every worker process through Redis (sliding-window log)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from typing import Protocol

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ringez_worker.api.errors import RateLimitWaitExceeded
from ringez_worker.api.priority import Priority, ceilings
from ringez_worker.logs import get_logger
from ringez_worker.lua import LuaScript

log = get_logger("ringez.api.ratelimit")

# Two gates, both on the Redis server's clock in ms (one clock for every process,
# whatever their hosts' clocks say):
# 1. The pauses: while the API has told us to back off (a 429 with a long Retry-After),
#    nobody sends anything (the account pause, KEYS[2]), or nobody of the caller's class
#    (the class pause, KEYS[3]: a 429 on a dial, api/transport.py); answer the time left.
# 2. The budget (KEYS[1]), a sliding-window log: one sorted set member per granted
#    request. Trim what fell out of the window, grant if there is room, else say how long
#    until the oldest grant leaves it.
# Atomic, so N processes never grant more than `limit` between them, nor any in a pause.
# ARGV[1] is the caller's class ceiling (api/priority.py): a lower class is refused once
# the window holds its ceiling, and waits until enough grants leave for it to fit.
_SLIDING_WINDOW = LuaScript(
    """
local paused = math.max(redis.call('PTTL', KEYS[2]), redis.call('PTTL', KEYS[3]))
if paused > 0 then return paused end
local key = KEYS[1]
local ceiling = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local used = redis.call('ZCARD', key)
if used < ceiling then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, window)
  return 0
end
local leaving = redis.call('ZRANGE', key, used - ceiling, used - ceiling, 'WITHSCORES')
return math.max(1, tonumber(leaving[2]) + window - now)
"""
)
# Pause the account for ARGV[1] ms from now, unless it is already paused for longer
# (two 429s in a row must not shorten the wait the first one asked for).
_PAUSE = LuaScript(
    """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], ARGV[2], 'PX', ms) end
return redis.call('PTTL', KEYS[1])
"""
)

STANDARD_TIER = (1000, 3600.0)
PREMIUM_TIER = (10000, 3600.0)


class RateLimiter(Protocol):
    """Anything the client can ask for permission before each HTTP request."""

    async def acquire(self, priority: Priority = Priority.LIVE) -> None: ...

    async def pause(self, seconds: float, reason: str = "", scope: Priority | None = None) -> None:
        """The API asked the whole account (`scope` None), or one class of requests, to
        wait `seconds` (a 429's Retry-After)."""
        ...


def api_key_fingerprint(api_key: str | SecretStr) -> str:
    """A short, stable, non-reversible name for an API key (for Redis keys and logs)."""
    raw = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class RedisRateLimiter:
    """At most `limit` requests in any `period` seconds, across all processes sharing `key`,
    and none at all while the account is paused (`pause`, kept at `key` + ":pause"), nor
    any of a class while that class is paused (`key` + ":pause:<class>").

    Each priority class below LIVE stops short of `limit` (`reserve_live`, api/priority.py),
    so live-call actions find room when dialing or polling has filled the window."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        *,
        limit: int = STANDARD_TIER[0],
        period: float = STANDARD_TIER[1],
        max_wait: float = 60.0,
        fail_open: bool = True,
        reserve_live: float = 0.10,
    ) -> None:
        if limit < 1 or period <= 0 or max_wait < 0:
            raise ValueError("limit must be >= 1, period > 0 and max_wait >= 0")
        self.redis = redis
        self.key = key
        self.limit = limit
        self.period = period
        self.max_wait = max_wait
        # Redis being down should not stop API calls: the API's own 429s still bound us.
        self.fail_open = fail_open
        self.pause_key = f"{key}:pause"
        self.ceilings = ceilings(limit, reserve_live)
        self._window_ms = max(1, round(period * 1000))
        self._rng = random.Random()

    @classmethod
    def for_api_key(
        cls,
        redis: Redis,
        api_key: str | SecretStr,
        *,
        prefix: str = "rz",
        limit: int = STANDARD_TIER[0],
        period: float = STANDARD_TIER[1],
        max_wait: float = 60.0,
        fail_open: bool = True,
        reserve_live: float = 0.10,
    ) -> RedisRateLimiter:
        """The limiter for one API key's budget; the key itself appears only as a hash."""
        return cls(
            redis,
            f"{prefix}:ratelimit:ringez:{api_key_fingerprint(api_key)}",
            limit=limit,
            period=period,
            max_wait=max_wait,
            fail_open=fail_open,
            reserve_live=reserve_live,
        )

    def __repr__(self) -> str:
        return f"RedisRateLimiter(key={self.key!r}, limit={self.limit}, period={self.period})"

    def _pause_key(self, scope: Priority | None) -> str:
        return self.pause_key if scope is None else f"{self.pause_key}:{scope.label}"

    async def try_acquire(self, priority: Priority = Priority.LIVE) -> float:
        """Take one request from the budget if there is room for `priority`: 0.0, else
        seconds to wait."""
        wait_ms = await _SLIDING_WINDOW(
            self.redis,
            [self.key, self.pause_key, self._pause_key(priority)],
            [self.ceilings[priority], self._window_ms, uuid.uuid4().hex],
        )
        return int(wait_ms) / 1000

    async def used(self) -> int:
        """Requests granted in the current window (all classes)."""
        t = await self.redis.time()
        now_ms = int(t[0]) * 1000 + int(t[1]) // 1000
        return int(await self.redis.zcount(self.key, now_ms - self._window_ms, "+inf"))

    async def left_fraction(self) -> float:
        """The share of the whole window still free (1.0: nothing used), for callers that
        back off before the budget runs out (the quality monitor's floor)."""
        return max(0.0, 1.0 - await self.used() / self.limit)

    async def pause(self, seconds: float, reason: str = "", scope: Priority | None = None) -> None:
        """Stop every process sharing this budget for `seconds`: all requests, or only
        those of class `scope` (never shortening a pause).

        Best effort: with Redis away, only this request's caller waits."""
        ms = max(1, round(seconds * 1000))
        try:
            await _PAUSE(self.redis, [self._pause_key(scope)], [ms, reason or "paused"])
        except RedisError as exc:
            log.warning("ringez.ratelimit.pause_failed", error=type(exc).__name__)
            return
        log.warning(
            "ringez.ratelimit.paused",
            pause_s=round(seconds, 3),
            reason=reason,
            scope="account" if scope is None else scope.label,
        )

    async def paused_for(self, scope: Priority | None = None) -> float:
        """Seconds the account (or class `scope`, by its own pause) stays paused; 0.0
        when it is not."""
        ms = await self.redis.pttl(self._pause_key(scope))
        return max(0, int(ms)) / 1000

    async def pauses(self) -> list[tuple[str, float, str]]:
        """Every pause in force: (scope, seconds left, reason), the account's first."""
        scopes: list[Priority | None] = [None, *Priority]
        async with self.redis.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.pttl(self._pause_key(scope))
                pipe.get(self._pause_key(scope))
            raw = await pipe.execute()
        found = []
        for i, scope in enumerate(scopes):
            ms, reason = raw[2 * i], raw[2 * i + 1]
            if int(ms) > 0:
                label = "account" if scope is None else scope.label
                text = reason.decode() if isinstance(reason, bytes) else str(reason or "")
                found.append((label, int(ms) / 1000, text))
        return found

    async def acquire(self, priority: Priority = Priority.LIVE) -> None:
        """Wait until the budget allows one more request of `priority`; raise if that takes
        over max_wait."""
        deadline = time.monotonic() + self.max_wait
        while True:
            try:
                wait = await self.try_acquire(priority)
            except RedisError as exc:
                if not self.fail_open:
                    raise
                log.warning("ringez.ratelimit.unavailable", error=type(exc).__name__)
                return
            if wait == 0:
                return
            remaining = deadline - time.monotonic()
            if wait > remaining:
                raise RateLimitWaitExceeded(
                    f"rate limit budget exhausted for {priority.label} requests or account "
                    f"paused; next slot in "
                    f"{wait:.3f} s, over the {self.max_wait:g} s wait allowed",
                    retry_after=wait,
                )
            log.debug("ringez.ratelimit.wait", wait_s=wait, priority=priority.label)
            # A little jitter so processes woken by the same freed slot do not all collide.
            await asyncio.sleep(wait + self._rng.uniform(0, 0.005 + wait * 0.05))
