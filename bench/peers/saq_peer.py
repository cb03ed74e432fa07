"""SAQ 0.26 peer (`saq[redis]`): `concurrency=100`, uvloop, WARNING logs.

SAQ may run a few jobs twice; the bench counts runs (the counter) against jobs queued.

    BENCH_REDIS_URL=... python saq_peer.py enqueue 20000
    BENCH_REDIS_URL=... python saq_peer.py worker
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop
from _incr import ENQUEUE_CHUNK, incr, quiet_logs, url, usage
from saq import Queue, Worker


async def job(ctx: dict[str, Any]) -> None:
    await incr()


async def enqueue(n: int) -> None:
    queue = Queue.from_url(url())
    await queue.connect()
    for start in range(0, n, ENQUEUE_CHUNK):
        count = min(ENQUEUE_CHUNK, n - start)
        await asyncio.gather(*(queue.enqueue("job") for _ in range(count)))
    await queue.disconnect()


async def work() -> None:
    queue = Queue.from_url(url())
    await Worker(queue, functions=[job], concurrency=100).start()


def main() -> None:
    mode, n = usage(sys.argv)
    quiet_logs()
    uvloop.run(enqueue(n) if mode == "enqueue" else work())


if __name__ == "__main__":
    main()
