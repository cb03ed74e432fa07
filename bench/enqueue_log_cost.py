"""What the console's delivery log and counters cost the receiver's enqueue script.

Runs `EventQueue.enqueue` for 20,000 unique `call.completed` bodies, 64 at a time, with
the script as it was before the console (`git show 6946f47:worker/queue.py`) and as
shipped, interleaved for 3 rounds on one throwaway redis-server. Reports events/s
through the client and Redis-side microseconds of EVALSHA per event (INFO commandstats).
No HTTP: this isolates the script; `bench/ingest.py` measures the whole receiver.

    .venv/bin/python bench/enqueue_log_cost.py
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import subprocess
import time
import types

from redis.asyncio import Redis

from ringez_worker.keys import Keys
from ringez_worker.sandbox.redis_server import RedisServer
from ringez_worker.worker import queue as shipped
from ringez_worker.worker.cli import build_event

BEFORE = "6946f47"
EVENTS = 20_000


def _before() -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:worker/queue.py"], capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("queue_before")
    exec(compile(source, "queue_before.py", "exec"), module.__dict__)
    return module


async def _run(module: types.ModuleType, redis: Redis, concurrency: int = 64) -> float:
    queue = module.EventQueue(redis, Keys(), dedupe_ttl_ms=3_600_000, job_ttl_ms=3_600_000)
    bodies = [
        build_event("call.completed", {"call_id": f"c{i}", "session_id": "s", "duration": i})
        for i in range(EVENTS)
    ]
    gate = asyncio.Semaphore(concurrency)

    async def one(body: bytes) -> None:
        async with gate:
            await queue.enqueue(hashlib.sha256(body).hexdigest(), body)

    started = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    elapsed = time.perf_counter() - started
    await queue.close()
    return EVENTS / elapsed


async def main() -> None:
    server = RedisServer().start()
    redis = Redis.from_url(server.url)
    results: dict[str, list[float]] = {}
    try:
        for _ in range(3):
            for name, module in (("before", _before()), ("shipped", shipped)):
                await redis.flushall()
                await redis.config_resetstat()
                results.setdefault(f"{name} events/s", []).append(await _run(module, redis))
                stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
                results.setdefault(f"{name} redis us/event", []).append(
                    stats.get("usec", 0) / EVENTS
                )
    finally:
        await redis.aclose()
        server.cleanup()
    for name, values in results.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:<24} median {statistics.median(values):>10.2f}   ({shown})")


if __name__ == "__main__":
    asyncio.run(main())
