"""The worker's retention sweep: stores trimmed on write are trimmed on time too.

The failed-events record and the delivery log are trimmed as they are written; a quiet
fleet writes nothing, so without this a record would outlive its retention for as long
as no new failure (or webhook) came. One small script and one XTRIM a minute per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger
from ringez_worker.settings import Settings
from ringez_worker.worker import failed

log = get_logger("ringez.retention")

SWEEP_SECONDS = 60.0


async def sweep(redis: Redis, keys: Keys, settings: Settings) -> tuple[int, int]:
    """One pass: failed records past retention or over the cap, old delivery-log entries.

    Returns what left the failed-events record (by retention, by the cap)."""
    removed = await failed.trim(
        redis,
        keys,
        retention_seconds=settings.failed_retention_seconds,
        max_records=settings.failed_max_records,
    )
    oldest_ms = int((time.time() - settings.delivery_log_retention) * 1000)
    await redis.xtrim(keys.deliveries, minid=oldest_ms, approximate=True)
    return removed


def start_sweeper(
    settings: Settings, redis: Redis, keys: Keys, every: float = SWEEP_SECONDS
) -> asyncio.Task[None]:
    async def run() -> None:
        while True:
            try:
                expired, capped = await sweep(redis, keys, settings)
                if expired or capped:
                    log.info("retention.failed_trimmed", expired=expired, capped=capped)
            except (RedisError, OSError) as exc:
                log.warning("retention.sweep_failed", error=type(exc).__name__)
            await asyncio.sleep(every)

    return asyncio.create_task(run(), name="ringez-retention-sweep")


async def stop_sweeper(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
