"""Redis memory per delivery for the receiver's dedupe record, as shipped and as it was.

For each variant, on a fresh redis-server of its own: INFO memory used_memory before;
--events unique deliveries written, 1,000 at a time, each followed by the removal of
their arq jobs (ZREM + DEL of the job key, as the worker does as it drains) so that only
the dedupe records remain; used_memory after. Bytes per event = delta / events. Before the
first reading one chunk of other deliveries goes the same way and is flushed, so the
server's one-off allocations on first use are not counted; the readings are taken on
one fresh connection (the queue's pooled connections are closed first).

Event timestamps are spread like real traffic: --per-day events a day (default
1,000,000), random (seeded) over the span that many events cover, ending a minute ago
(100,000 events: the last 2.4 h; 1,000,000: the last 24 h), written in timestamp order.
After each chunk, --redeliver of the deliveries so far (default 5 %) are sent again with
the byte-identical body and must all be taken for duplicates (they add no record).

Variants:
  shipped      EventQueue.enqueue(delivery_id, body, received_ms, event_ms) of worker/queue.py,
               the receiver's own path (group commit, batched Lua): HSETNX of 16 raw
               bytes into the hash rz:d:<event_ms // 600000>:<2 hex>, PEXPIREAT bucket
               end + window. Also reports the bucket keys (count, entries each, encoding)
               and MEMORY USAGE of a sample bucket.
  per-key      the design before it, reimplemented here: one key per delivery,
               SET rz:d:<32 hex> 1 NX PX <window> in the same Lua as the job write.
  done-record  not dedupe, for scale (not run by default): the worker's per-delivery
               completion hash rz:done:<64 hex> (one handler, kept 7 days).

At the end, after the jobs are gone, the first delivery is sent again and must still be
recognised as a duplicate, and no job key or queue may be left.

Loopback only, bounded (--events <= 5,000,000), stops by itself.

    python bench/dedupe_memory.py
    python bench/dedupe_memory.py --events 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_apt, machine  # noqa: E402
from ringez_worker.jobs import job_bytes  # noqa: E402
from ringez_worker.keys import BUCKET_MS, Keys  # noqa: E402
from ringez_worker.sandbox.redis_server import RedisServer  # noqa: E402
from ringez_worker.settings import Settings  # noqa: E402
from ringez_worker.worker.cli import build_event  # noqa: E402
from ringez_worker.worker.queue import EventQueue  # noqa: E402

ALL_VARIANTS = ("shipped", "per-key", "done-record")
DEFAULT_VARIANTS = ("shipped", "per-key")
DAY_MS = 86_400_000
CHUNK = 1000
SETTINGS = Settings()
# As ringez_worker.worker.receiver builds the queue.
WINDOW_MS = (SETTINGS.dedupe_window_seconds + SETTINGS.clock_skew_seconds) * 1000
JOB_TTL_MS = max(WINDOW_MS, SETTINGS.handler_state_ttl_seconds * 1000)

# The receiver's script before the timestamp-bucketed record (one key per delivery).
_PER_KEY_ENQUEUE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('PSETEX', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
  return 1
end
return 0
"""


def per_key_name(keys: Keys, delivery_id: str) -> str:
    return f"{keys.prefix}:d:{delivery_id[:32]}"


class PerKeyQueue:
    """The per-key design: one EVALSHA of the old script per delivery, pipelined."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._sha: str | None = None

    async def enqueue_many(self, items: list[tuple[str, bytes, int]]) -> list[bool]:
        if self._sha is None:
            self._sha = await self._redis.script_load(_PER_KEY_ENQUEUE)
        now = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        for did, body, _ in items:
            pipe.evalsha(
                self._sha,
                3,
                per_key_name(self._keys, did),
                self._keys.job(did),
                self._keys.queue,
                WINDOW_MS,
                JOB_TTL_MS,
                job_bytes(did, body, now),
                now,
                did,
            )
        return [bool(r) for r in await pipe.execute()]


def body_for(i: int, event_ms: int) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event_ms // 1000))
    stamp += f".{event_ms % 1000:03d}Z"
    data = {"call_id": f"call_mem_{i}", "session_id": "sess_mem", "duration": 42}
    return build_event("call.completed", data, timestamp=stamp)


def timestamps(events: int, per_day: int, seed: int) -> list[int]:
    """Event times (ms) as `per_day` a day would give: random over the span, sorted."""
    end = int(time.time() * 1000) - 60_000
    span = max(1, events * DAY_MS // per_day)
    rng = random.Random(seed)
    return sorted(end - rng.randrange(span) for _ in range(events))


async def used_memory(redis: Redis) -> int:
    # Drop the queue's pooled connections (their buffers are not per event): the reading
    # is taken on one fresh connection, before and after alike.
    await redis.connection_pool.disconnect()
    await asyncio.sleep(1.0)  # let serverCron finish any incremental rehash
    return int((await redis.info("memory"))["used_memory"])


class Writer:
    """Writes (delivery id, body, event ms) through one variant's path."""

    def __init__(self, variant: str, redis: Redis, keys: Keys) -> None:
        self.variant = variant
        self.redis = redis
        self.keys = keys
        self.shipped = EventQueue(redis, keys, dedupe_ttl_ms=WINDOW_MS, job_ttl_ms=JOB_TTL_MS)
        self.per_key = PerKeyQueue(redis, keys)

    async def write(self, items: list[tuple[str, bytes, int]]) -> list[bool]:
        if self.variant == "shipped":
            now = int(time.time() * 1000)
            queue = self.shipped
            calls = (queue.enqueue(d, b, received_ms=now, event_ms=ms) for d, b, ms in items)
            return list(await asyncio.gather(*calls))
        if self.variant == "per-key":
            return await self.per_key.enqueue_many(items)
        pipe = self.redis.pipeline(transaction=False)
        for did, _, _ in items:
            pipe.hset(self.keys.done(did), "bench.noop_handlers.noop", int(time.time() * 1000))
            pipe.expire(self.keys.done(did), SETTINGS.handler_state_ttl_seconds)
        await pipe.execute()
        return [True] * len(items)

    def record_key(self, delivery_id: str, event_ms: int) -> str:
        if self.variant == "shipped":
            return self.keys.dedupe(delivery_id, event_ms)[0]
        if self.variant == "per-key":
            return per_key_name(self.keys, delivery_id)
        return self.keys.done(delivery_id)

    async def close(self) -> None:
        await self.shipped.close()


async def warm_up(writer: Writer, redis: Redis, keys: Keys, stamps: list[int]) -> None:
    """One chunk through the same path, then FLUSHALL: the server's one-off allocations
    on first use (~0.3 MB, kept after FLUSHALL) are then not counted as records."""
    items = []
    for j, ms in enumerate(stamps[:CHUNK]):
        body = body_for(-1 - j, ms)
        items.append((hashlib.sha256(body).hexdigest(), body, ms))
    await writer.write(items)
    await remove_jobs(redis, keys, [d for d, _, _ in items])
    await redis.flushall()


async def remove_jobs(redis: Redis, keys: Keys, ids: list[str]) -> None:
    pipe = redis.pipeline(transaction=False)
    for did in ids:
        pipe.zrem(keys.queue, did)
        pipe.delete(keys.job(did))
    await pipe.execute()


async def bucket_stats(redis: Redis) -> dict[str, Any]:
    """Entries and encoding of every dedupe bucket (shipped variant)."""
    names = [k async for k in redis.scan_iter(match="rz:d:*", count=10_000)]
    lengths: list[int] = []
    encodings: Counter[str] = Counter()
    for first in range(0, len(names), 5000):
        pipe = redis.pipeline(transaction=False)
        for name in names[first : first + 5000]:
            pipe.hlen(name)
            pipe.object("encoding", name)
        replies = await pipe.execute()
        lengths += replies[0::2]
        encodings.update(e.decode() if isinstance(e, bytes) else e for e in replies[1::2])
    lengths.sort()
    return {
        "buckets": len(names),
        "entries_per_bucket_min_median_max": (
            [lengths[0], statistics.median(lengths), lengths[-1]] if lengths else None
        ),
        "bucket_encodings": dict(encodings),
    }


async def measure(
    variant: str, events: int, per_day: int, redeliver: float, seed: int, listpack: int | None
) -> dict[str, Any]:
    keys = Keys()
    stamps = timestamps(events, per_day, seed)
    rng = random.Random(seed + 1)
    extra = ["--hash-max-listpack-entries", str(listpack)] if listpack else []
    with RedisServer(extra_args=extra) as server:
        redis = Redis.from_url(server.url)
        try:
            config = await redis.config_get("hash-max-listpack-entries")
            writer = Writer(variant, redis, keys)
            await warm_up(writer, redis, keys, stamps)
            before = await used_memory(redis)
            started = time.monotonic()
            sent: list[tuple[str, bytes, int]] = []
            redelivered = 0
            for first in range(0, events, CHUNK):
                items = []
                for i in range(first, min(events, first + CHUNK)):
                    body = body_for(i, stamps[i])
                    items.append((hashlib.sha256(body).hexdigest(), body, stamps[i]))
                if not all(await writer.write(items)):
                    raise SystemExit(f"{variant}: a unique delivery was taken for a duplicate")
                if variant != "done-record":
                    await remove_jobs(redis, keys, [d for d, _, _ in items])
                sent += items
                if variant != "done-record" and redeliver > 0:
                    again = rng.sample(sent, min(len(sent), round(len(items) * redeliver)))
                    if any(await writer.write(again)):
                        raise SystemExit(f"{variant}: a redelivery was queued again")
                    redelivered += len(again)
            write_s = time.monotonic() - started
            await writer.close()
            after = await used_memory(redis)
            dbsize = int(await redis.dbsize())
            first_id, first_body, first_ms = sent[0]
            sample = writer.record_key(first_id, first_ms)
            if variant == "shipped":
                # A bucket from the middle of the span: a full one, not an edge.
                mid_id, _, mid_ms = sent[len(sent) // 2]
                sample = writer.record_key(mid_id, mid_ms)
            sample_usage = await redis.memory_usage(sample, samples=0)
            encoding = await redis.object("encoding", sample)
            sample_ttl_h = round(int(await redis.pttl(sample)) / 3_600_000, 2)
            sample_entries = (
                int(await redis.hlen(sample)) if variant in ("shipped", "done-record") else 1
            )
            stats = await bucket_stats(redis) if variant == "shipped" else {}
            if variant != "done-record":
                # Only the dedupe records are left, and they still catch a redelivery.
                records = stats["buckets"] if variant == "shipped" else events
                if dbsize != records or await redis.exists(keys.queue):
                    raise SystemExit(f"{variant}: {dbsize} keys, {records} dedupe records")
                if (await writer.write([(first_id, first_body, first_ms)]))[0]:
                    raise SystemExit(f"{variant}: a redelivery was not recognised")
                await writer.close()
        finally:
            await redis.aclose()
    return {
        "variant": variant,
        "events": events,
        "per_day": per_day,
        "span_h": round((stamps[-1] - stamps[0]) / 3_600_000, 2),
        "redeliveries": redelivered,
        "write_s": round(write_s, 1),
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_event": round((after - before) / events, 1),
        "keys": dbsize,
        "sample_key": sample,
        "sample_encoding": encoding.decode() if isinstance(encoding, bytes) else encoding,
        "sample_entries": sample_entries,
        "sample_memory_usage": sample_usage,
        "sample_bytes_per_entry": round(sample_usage / sample_entries, 1),
        "sample_ttl_h": sample_ttl_h,
        "hash_max_listpack_entries": int(config["hash-max-listpack-entries"]),
        **stats,
    }


def kept_ms(variant: str) -> float:
    """How long a record lives on average after its event."""
    if variant == "done-record":
        return SETTINGS.handler_state_ttl_seconds * 1000
    if variant == "shipped":
        # Until its bucket's end (half a bucket on average) + the window + clock skew.
        return BUCKET_MS / 2 + WINDOW_MS
    return WINDOW_MS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--per-day", type=int, default=1_000_000, help="traffic rate")
    parser.add_argument("--redeliver", type=float, default=0.05, help="fraction sent twice")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--hash-max-listpack-entries",
        type=int,
        default=None,
        help="set on the server (default: the server's own, 512 for redis-server 7.x)",
    )
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(ALL_VARIANTS):
        raise SystemExit(f"unknown variants: {sorted(set(variants) - set(ALL_VARIANTS))}")
    if not 0 < args.events <= 5_000_000:
        raise SystemExit("keep it bounded: 0 < --events <= 5,000,000")
    if args.per_day <= 0 or not 0 <= args.redeliver <= 1:
        raise SystemExit("--per-day > 0 and 0 <= --redeliver <= 1")
    os.chdir(ROOT)
    ensure_apt("redis-server", "redis-server")
    print(json.dumps(machine()), flush=True)
    results = []
    for variant in variants:
        result = asyncio.run(
            measure(
                variant,
                args.events,
                args.per_day,
                args.redeliver,
                args.seed,
                args.hash_max_listpack_entries,
            )
        )
        results.append(result)
        print(json.dumps(result), flush=True)
    print()
    print(
        f"| variant | events | bytes/event | one day at {args.per_day:,}/day "
        "| kept for | live at that rate |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        kept = kept_ms(r["variant"])
        day_mb = r["bytes_per_event"] * args.per_day / 1e6
        print(
            f"| {r['variant']} | {r['events']:,} | {r['bytes_per_event']} | {day_mb:,.1f} MB | "
            f"{kept / 3_600_000:.2f} h | {day_mb * kept / DAY_MS:,.0f} MB |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
