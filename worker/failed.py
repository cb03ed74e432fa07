"""The failed-events record: deliveries whose handlers kept failing, kept for replay."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from ringez_worker.keys import Keys
from ringez_worker.worker.queue import REPLAY_PENDING, enqueue_replay


async def list_failed(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every record, oldest failure first, without the bodies."""
    raw = await redis.hvals(keys.failed)
    records = [orjson.loads(r) for r in raw]
    for record in records:
        record.pop("body", None)
    return sorted(records, key=lambda r: r.get("first_failed_ms", 0))


async def get_failed(redis: Redis, keys: Keys, delivery_id: str) -> dict[str, Any] | None:
    raw = await redis.hget(keys.failed, _resolve(delivery_id))
    if raw is None:
        matches = [k for k in await redis.hkeys(keys.failed) if k.decode().startswith(delivery_id)]
        if len(matches) != 1:
            return None
        raw = await redis.hget(keys.failed, matches[0])
    return orjson.loads(raw) if raw else None


async def replay(redis: Redis, keys: Keys, delivery_id: str, ttl_ms: int) -> str | None:
    """Queue the delivery again for only the handlers that failed; the record stays until
    the replay succeeds. Returns the job id, or None if there is no such record."""
    record = await get_failed(redis, keys, delivery_id)
    if record is None:
        return None
    handlers = [name for name in record["handlers"] if not name.startswith("<")]
    return await enqueue_replay(
        redis, keys, record["delivery_id"], record["body"], handlers or [REPLAY_PENDING], ttl_ms
    )


async def purge(redis: Redis, keys: Keys, delivery_id: str | None = None) -> int:
    """Delete one record, or all of them; returns how many went."""
    if delivery_id is None:
        count = await redis.hlen(keys.failed)
        await redis.delete(keys.failed)
        return count
    record = await get_failed(redis, keys, delivery_id)
    if record is None:
        return 0
    return await redis.hdel(keys.failed, record["delivery_id"])


def _resolve(delivery_id: str) -> str:
    return delivery_id.strip().lower()
