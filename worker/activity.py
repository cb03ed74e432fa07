"""Writes the console's fleet-wide record: per-minute counters and the delivery log.

Everything here rides in round trips that already happen (the receiver's enqueue script,
the dispatcher's completion pipeline) or is on a rare path (a failed run, a retry). The
delivery log is one capped stream, `rz:log`:

- `k=r j=<job>`: an accepted delivery (the arq job bytes, which hold its id, the body and
  the receive time, so the script passes nothing new);
- `k=u d=<id>`: a duplicate;
- `k=h d=<id> h=<handler> o=ok|failed t=<try> ms=<duration> [e=<error>] [a=<api json>]`:
  one handler run, with the Ringez API requests it made.

Trimmed approximately to DELIVERY_LOG_MAX_ENTRIES on every write and to
DELIVERY_LOG_RETENTION once per enqueue batch. Rejected webhooks are unauthenticated:
only their counts per reason per minute are kept, summed in memory and written once a
second, so a flood costs Redis one HINCRBY per reason per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger

log = get_logger("ringez.activity")

# Counters outlive the console's one-hour view by an hour (a late reader, clock skew).
STATS_TTL_SECONDS = 7200
ERROR_CHARS = 500


def minute(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // 60)


def add_run(
    pipe: Pipeline,
    keys: Keys,
    *,
    delivery_id: str,
    handler: str,
    outcome: str,
    job_try: int,
    duration_ms: float,
    max_entries: int,
    api_calls: list[dict[str, Any]] | None = None,
    error: str | None = None,
) -> None:
    """Queue a handler run's log entry and its counter on `pipe` (two more commands)."""
    fields: dict[FieldT, EncodableT] = {
        "k": "h",
        "d": delivery_id,
        "h": handler,
        "o": outcome,
        "t": job_try,
        "ms": round(duration_ms, 1),
    }
    if error:
        fields["e"] = error[:ERROR_CHARS]
    if api_calls:
        fields["a"] = orjson.dumps(api_calls)
    pipe.xadd(keys.deliveries, fields, maxlen=max_entries, approximate=True)
    stats = keys.stats(minute())
    pipe.hincrby(stats, "handled" if outcome == "ok" else "run_failed", 1)
    pipe.expire(stats, STATS_TTL_SECONDS)


async def count(redis: Redis, keys: Keys, field: str, amount: int = 1) -> None:
    """Bump one per-minute counter (retried, failed); best effort, never raises."""
    stats = keys.stats(minute())
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(stats, field, amount)
            pipe.expire(stats, STATS_TTL_SECONDS)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("activity.count_failed", field=field, error=type(exc).__name__)


async def log_failed_run(redis: Redis, keys: Keys, **run: Any) -> None:
    """A failed run's entry: its own round trip, on the failure path only; never raises."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            add_run(pipe, keys, outcome="failed", **run)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("activity.log_failed", error=type(exc).__name__)


class RejectCounter:
    """Counts rejected webhooks per reason in memory; a task writes the sums once a second."""

    def __init__(self, keys: Keys, interval: float = 1.0) -> None:
        self._keys = keys
        self._interval = interval
        self._counts: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._redis: Redis | None = None

    def add(self, reason: str) -> None:
        self._counts[reason] += 1

    def start(self, redis: Redis) -> None:
        self._redis = redis
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        if not self._counts or self._redis is None:
            return
        counts, self._counts = self._counts, Counter()
        stats = self._keys.stats(minute())
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for reason, n in counts.items():
                    pipe.hincrby(stats, f"rejected:{reason}", n)
                pipe.expire(stats, STATS_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # Counts only: losing a second's worth while Redis is away is acceptable.
            log.warning("activity.rejects_lost", error=type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
