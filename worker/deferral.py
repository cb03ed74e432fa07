"""Deferrals: a job stopped by something outside its handlers (the API's 429 +
Retry-After, or Redis refusing a handler's command or its completion record) waits that
long, and the wait is not one of its JOB_MAX_TRIES (`dispatch.outside_wait` decides).

arq counts every run of a job (`arq:retry:<job id>`, incremented as the run starts) and
the dispatcher's try count is built on it. A deferral winds that counter back by one, so
the next run has the same `job_try` and arq's crash backstop (`max_tries`) keeps its
meaning. One exception: a first run's counter is left at 1, so that the next run (try
2) reads the completion record instead of assuming nothing succeeded yet; the deferral
record remembers that one uncounted run, and `tries()` takes it off again.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from ringez_worker.keys import Keys
from ringez_worker.lua import LuaScript

# KEYS: the deferral record, arq's try counter. ARGV: seconds, the cap, job_try, ttl.
# Returns 0 (nothing written) when this deferral would take the total over the cap.
_DEFER = LuaScript(
    """
local total = tonumber(redis.call('HGET', KEYS[1], 'seconds') or '0') + tonumber(ARGV[1])
if total > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'seconds', tostring(total))
redis.call('HINCRBY', KEYS[1], 'count', 1)
if tonumber(ARGV[3]) > 1 then
  redis.call('DECR', KEYS[2])
else
  redis.call('HSET', KEYS[1], 'uncounted', 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
)


@dataclass(frozen=True, slots=True)
class Deferrals:
    """Defers jobs (rate limit, Redis refusing) within `max_seconds` in total per job."""

    redis: Redis
    keys: Keys
    max_seconds: float
    ttl_seconds: int

    async def tries(self, job_id: str, job_try: int) -> int:
        """The job's try count for JOB_MAX_TRIES: arq's, less the deferrals it still holds."""
        if job_try == 1:
            return 1  # a first run has never been deferred
        uncounted = await self.redis.hget(self.keys.deferrals(job_id), "uncounted")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        return job_try - int(uncounted or 0)

    async def defer(self, job_id: str, job_try: int, seconds: float) -> bool:
        """Record a deferral of `seconds`; False when it would go over the total allowed."""
        keys = [self.keys.deferrals(job_id), self.keys.arq_tries(job_id)]
        args = [seconds, self.max_seconds, job_try, self.ttl_seconds]
        return bool(await _DEFER(self.redis, keys, args))

    async def total(self, job_id: str) -> float:
        """Seconds this job has been deferred for so far."""
        return float(await self.redis.hget(self.keys.deferrals(job_id), "seconds") or 0)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
