"""streaQ 7.2 peer: `concurrency=100`, uvloop (anyio's `use_uvloop`), WARNING logs.

streaQ talks to Redis through coredis; the job's INCR goes through redis-py like
everyone else's.

    BENCH_REDIS_URL=... python streaq_peer.py enqueue 20000
    BENCH_REDIS_URL=... python streaq_peer.py worker
"""

from __future__ import annotations

import sys

import anyio
from _incr import ENQUEUE_CHUNK, incr, quiet_logs, url, usage
from streaq import Worker

worker = Worker(redis_url=url(), concurrency=100, anyio_kwargs={"use_uvloop": True})


@worker.task()
async def job() -> None:
    await incr()


async def enqueue(n: int) -> None:
    async with worker:
        for start in range(0, n, ENQUEUE_CHUNK):
            count = min(ENQUEUE_CHUNK, n - start)
            await worker.enqueue_many([job.enqueue() for _ in range(count)])


def main() -> None:
    mode, n = usage(sys.argv)
    quiet_logs()
    if mode == "enqueue":
        anyio.run(enqueue, n, backend_options={"use_uvloop": True})
    else:
        worker.run_sync()


if __name__ == "__main__":
    main()
