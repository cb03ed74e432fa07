"""The one backoff: exponential with full jitter (the API client's retries, job retries,
the worker's waits on a refusing Redis and its in-process restarts all use it)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError


def backoff_seconds(
    attempt: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    Full jitter: workers that failed together (a Redis blip, a 503 burst) do not all
    retry at the same instant.
    """
    if base <= 0:
        return 0.0
    return (rng or random).uniform(0, min(cap, base * 2 ** (attempt - 1)))


async def write_within(seconds: float, write: Callable[[], Awaitable[object]]) -> None:
    """Run the Redis write `write()`, waiting out refusals and lost connections (a
    failover, a full Redis being freed) with backoff for up to `seconds`; then raise.

    For records of side effects that have already happened: a short refusal is better
    waited out than answered by running the side effect again."""
    deadline = time.monotonic() + seconds
    attempt = 0
    while True:
        try:
            await write()
            return
        except (RedisError, OSError):
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            await asyncio.sleep(min(left, backoff_seconds(attempt, 0.05, 1.0)))
