"""Durable enqueue of webhook deliveries as arq jobs, one Redis round trip per batch.

Each delivery is written by one Lua script that, atomically, claims the dedupe key
and writes an arq-compatible job (`arq:job:<id>` + a score in the queue's sorted set).
Concurrent requests are grouped: while one pipeline is in flight the next requests
queue up and go together in the next one (group commit), so a busy receiver pays one
round trip for many events instead of arq's three per event.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
from arq.constants import job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

JOB_FUNCTION = "handle_event"

_ENQUEUE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('PSETEX', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Keys:
    """Names of every Redis key the service writes, under one prefix."""

    prefix: str = "rz"
    queue: str = "ringez:queue"

    def dedupe(self, delivery_id: str) -> str:
        # 128 bits of the body hash are plenty to tell deliveries apart and halve the key.
        return f"{self.prefix}:d:{delivery_id[:32]}"

    def job(self, delivery_id: str) -> str:
        return job_key_prefix + delivery_id

    def done(self, delivery_id: str) -> str:
        return f"{self.prefix}:done:{delivery_id}"

    @property
    def failed(self) -> str:
        return f"{self.prefix}:failed"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    @property
    def wake(self) -> str:
        return f"{self.prefix}:wake:{self.queue}"


def dumps_job(obj: object) -> bytes:
    """arq job serializer: JSON, never pickle (a writable Redis must not mean code execution)."""
    return orjson.dumps(obj)


def loads_job(data: bytes) -> object:
    return orjson.loads(data)


def job_bytes(
    delivery_id: str, body: bytes | str, received_ms: int, only: list[str] | None = None
) -> bytes:
    """The arq job record for one delivery, in arq's own layout."""
    text = body.decode() if isinstance(body, bytes) else body
    args: list[object] = [delivery_id, text, received_ms]
    if only is not None:
        args.append(only)
    return orjson.dumps({"t": 1, "f": JOB_FUNCTION, "a": args, "k": {}, "et": received_ms})


async def enqueue_replay(
    redis: Redis, keys: Keys, delivery_id: str, body: str, only: list[str] | None, ttl_ms: int
) -> str:
    """Queue a delivery again outside the receiver (failed-events replay); returns the job id."""
    now = int(time.time() * 1000)
    job_id = f"{delivery_id}:replay:{now}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.psetex(keys.job(job_id), ttl_ms, job_bytes(delivery_id, body, now, only))
        pipe.zadd(keys.queue, {job_id: now})
        pipe.publish(keys.wake, b"")
        await pipe.execute()
    return job_id


class EventQueue:
    """Writes deliveries to Redis; `enqueue` returns only once Redis has answered."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        dedupe_ttl_ms: int,
        job_ttl_ms: int,
        max_batch: int = 256,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._dedupe_ttl = str(dedupe_ttl_ms)
        self._job_ttl = str(job_ttl_ms)
        self._max_batch = max_batch
        self._sha: str | None = None
        self._pending: list[tuple[tuple[str, ...], asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def enqueue(self, delivery_id: str, body: bytes, received_ms: int | None = None) -> bool:
        """Queue one delivery. True: new job written. False: a duplicate inside the window.

        Raises the Redis error when the write cannot be confirmed.
        """
        now = received_ms if received_ms is not None else int(time.time() * 1000)
        args = (
            self._keys.dedupe(delivery_id),
            self._keys.job(delivery_id),
            self._keys.queue,
            self._dedupe_ttl,
            self._job_ttl,
            job_bytes(delivery_id, body, now),  # type: ignore[arg-type]
            str(now),
            delivery_id,
        )
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((args, future))  # type: ignore[arg-type]
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        # Let every request that is already runnable join the first batch.
        await asyncio.sleep(0)
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await self._write(batch)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(bool(result))

    async def _write(self, batch: list) -> list[object]:
        if self._sha is None:
            self._sha = await self._redis.script_load(_ENQUEUE)
        results = await self._pipeline(batch)
        if any(isinstance(r, NoScriptError) for r in results):
            # Redis restarted and lost its script cache; nothing ran, so run it again.
            self._sha = await self._redis.script_load(_ENQUEUE)
            results = await self._pipeline(batch)
        return results

    async def _pipeline(self, batch: list) -> list[object]:
        pipe = self._redis.pipeline(transaction=False)
        for args, _ in batch:
            pipe.evalsha(self._sha, 3, *args)
        pipe.publish(self._keys.wake, b"")
        results = await pipe.execute(raise_on_error=False)
        return results[:-1]

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
