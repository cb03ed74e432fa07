"""Redis memory per delivery for the dedupe record, as the receiver writes it, and alternatives.

For each variant, on a fresh redis-server (FLUSHALL + SCRIPT FLUSH between variants):
INFO memory used_memory before; --events unique deliveries written through the real Lua
path (worker.queue.EventQueue, group-committed, 256 at a time) with their arq jobs removed
after every 1,000 (ZREM + DEL of the job key, as the worker does as it drains), so only the
dedupe records remain; used_memory after. Bytes per event = delta / events.

Variants:
  current      EventQueue as shipped: SET rz:d:<32 hex> 1 NX PX <72 h + 5 min>
  short-key    the same script, key rz:d:<22 chars base64url of the same 128 bits>
  ts-bucket    HSETNX into rz:d:<10-min bucket of the body's timestamp>:<2 hex of the id>,
               field = 16 raw bytes of the id; the bucket hash expires once its newest
               timestamp is past the window (a redelivery is byte-identical, so it has the
               same timestamp and lands in the same bucket; the receiver rejects bodies
               older than the window anyway). Timestamps are spread as 1,000,000/day.
  done-record  not dedupe: the worker's per-delivery completion hash (rz:done:<id>, one
               handler, 7 days), for scale

Loopback only, bounded, stops by itself.

    python bench/dedupe_memory.py
    python bench/dedupe_memory.py --events 1000000 --variants current,ts-bucket
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_apt, machine  # noqa: E402
from worker.cli import build_event  # noqa: E402
from worker.queue import EventQueue, Keys, job_bytes  # noqa: E402
from worker.redis_server import RedisServer  # noqa: E402
from worker.settings import Settings  # noqa: E402

ALL_VARIANTS = ("current", "short-key", "ts-bucket", "done-record")
EVENTS_PER_DAY = 1_000_000
BUCKET_MS = 600_000
SETTINGS = Settings()
WINDOW_MS = (SETTINGS.dedupe_window_seconds + SETTINGS.clock_skew_seconds) * 1000
JOB_TTL_MS = max(WINDOW_MS, SETTINGS.handler_state_ttl_seconds * 1000)

_BUCKET_ENQUEUE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], '1') == 1 then
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
  redis.call('PSETEX', KEYS[2], ARGV[3], ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class ShortKeys(Keys):
    """Keys with the dedupe record named by base64url of 128 bits instead of 32 hex chars."""

    def dedupe(self, delivery_id: str) -> str:
        raw = bytes.fromhex(delivery_id[:32])
        return f"{self.prefix}:d:{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"


class BucketQueue(EventQueue):
    """EventQueue whose dedupe record is a field in a timestamp-bucketed hash (proposal)."""

    async def enqueue_at(self, delivery_id: str, body: bytes, event_ms: int) -> bool:
        now = int(time.time() * 1000)
        bucket = event_ms // BUCKET_MS
        expire_at = (bucket + 1) * BUCKET_MS + WINDOW_MS
        args = (
            f"{self._keys.prefix}:d:{bucket}:{delivery_id[:2]}",
            self._keys.job(delivery_id),
            self._keys.queue,
            bytes.fromhex(delivery_id[:32]),
            str(expire_at),
            self._job_ttl,
            job_bytes(delivery_id, body, now),
            str(now),
            delivery_id,
        )
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((args, future))  # type: ignore[arg-type]
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _write(self, batch: list) -> list[object]:
        if self._sha is None:
            self._sha = await self._redis.script_load(_BUCKET_ENQUEUE)
        return await self._pipeline(batch)


def body_for(i: int, event_ms: int) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event_ms / 1000))
    stamp += f".{event_ms % 1000:03d}Z"
    data = {"call_id": f"call_mem_{i}", "session_id": "sess_mem", "duration": 42}
    return build_event("call.completed", data, timestamp=stamp)


async def used_memory(redis: Redis) -> int:
    await asyncio.sleep(1.0)  # let serverCron finish any incremental rehash
    return int((await redis.info("memory"))["used_memory"])


async def remove_jobs(redis: Redis, keys: Keys, ids: list[str]) -> None:
    pipe = redis.pipeline(transaction=False)
    for did in ids:
        pipe.zrem(keys.queue, did)
        pipe.delete(keys.job(did))
    await pipe.execute()


async def measure(variant: str, redis: Redis, events: int) -> dict[str, Any]:
    await redis.flushall()
    await redis.script_flush()
    keys: Keys = ShortKeys() if variant == "short-key" else Keys()
    queue_cls = BucketQueue if variant == "ts-bucket" else EventQueue
    queue = queue_cls(redis, keys, dedupe_ttl_ms=WINDOW_MS, job_ttl_ms=JOB_TTL_MS)
    before = await used_memory(redis)
    start_ms = int(time.time() * 1000) - 3_600_000
    spacing_ms = 86_400_000 / EVENTS_PER_DAY
    chunk = 1000
    sample = ""
    for first in range(0, events, chunk):
        items = []
        for i in range(first, min(events, first + chunk)):
            event_ms = start_ms + int(i * spacing_ms)
            body = body_for(i, event_ms)
            items.append((hashlib.sha256(body).hexdigest(), body, event_ms))
        if variant == "done-record":
            pipe = redis.pipeline(transaction=False)
            for did, _, _ in items:
                pipe.hset(keys.done(did), "bench.noop_handlers.noop", int(time.time() * 1000))
                pipe.expire(keys.done(did), SETTINGS.handler_state_ttl_seconds)
            await pipe.execute()
            sample = keys.done(items[0][0])
            continue
        if isinstance(queue, BucketQueue):
            new = await asyncio.gather(*(queue.enqueue_at(d, b, ms) for d, b, ms in items))
        else:
            new = await asyncio.gather(*(queue.enqueue(d, b) for d, b, _ in items))
        if not all(new):
            raise SystemExit(f"{variant}: a unique delivery was taken for a duplicate")
        await remove_jobs(redis, keys, [d for d, _, _ in items])
        if not sample:
            did = items[0][0]
            sample = (
                f"{keys.prefix}:d:{items[0][2] // BUCKET_MS}:{did[:2]}"
                if variant == "ts-bucket"
                else keys.dedupe(did)
            )
    await queue.close()
    after = await used_memory(redis)
    dbsize = int(await redis.dbsize())
    info = await redis.info("keyspace")
    sample_usage = await redis.memory_usage(sample) if sample else None
    encoding = (await redis.object("encoding", sample)) if sample else None
    # Duplicates must still be caught after the jobs are gone.
    if variant != "done-record":
        body = body_for(0, start_ms)
        did = hashlib.sha256(body).hexdigest()
        again = (
            await queue.enqueue_at(did, body, start_ms)
            if isinstance(queue, BucketQueue)
            else await queue.enqueue(did, body)
        )
        if again:
            raise SystemExit(f"{variant}: a redelivery was not recognised")
        await queue.close()
    return {
        "variant": variant,
        "events": events,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_event": round((after - before) / events, 1),
        "keys": dbsize,
        "keyspace": info.get("db0"),
        "sample_key": sample,
        "sample_encoding": encoding.decode() if isinstance(encoding, bytes) else encoding,
        "sample_memory_usage": sample_usage,
    }


async def run(variants: list[str], events: int) -> list[dict[str, Any]]:
    results = []
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
        try:
            for variant in variants:
                result = await measure(variant, redis, events)
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            await redis.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--variants", default=",".join(ALL_VARIANTS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(ALL_VARIANTS):
        raise SystemExit(f"unknown variants: {sorted(set(variants) - set(ALL_VARIANTS))}")
    if args.events > 5_000_000:
        raise SystemExit("keep it bounded: --events <= 5,000,000")
    os.chdir(ROOT)
    ensure_apt("redis-server", "redis-server")
    print(json.dumps(machine()), flush=True)
    results = asyncio.run(run(variants, args.events))
    print()
    print("| variant | events | bytes/event | kept for | live at 1M events/day |")
    print("|---|---|---|---|---|")
    for r in results:
        # Completion records live handler_state_ttl (7 days); dedupe records the window.
        kept_ms = (
            SETTINGS.handler_state_ttl_seconds * 1000
            if r["variant"] == "done-record"
            else WINDOW_MS
        )
        live = r["bytes_per_event"] * EVENTS_PER_DAY * kept_ms / 86_400_000 / 1e6
        print(
            f"| {r['variant']} | {r['events']:,} | {r['bytes_per_event']} | "
            f"{kept_ms / 3_600_000:.1f} h | {live:,.0f} MB |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
