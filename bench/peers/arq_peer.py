"""arq 0.28 peer: `max_jobs=100, poll_delay=0.01, keep_result=0`, uvloop, WARNING logs.

BENCH_REDIS_URL=... python arq_peer.py enqueue 20000
BENCH_REDIS_URL=... python arq_peer.py worker
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop
from _incr import ENQUEUE_CHUNK, incr, quiet_logs, url, usage
from arq import create_pool, func, run_worker
from arq.connections import RedisSettings


async def job(ctx: dict[str, Any]) -> None:
    await incr()


class WorkerSettings:
    functions = [func(job, name="incr")]  # type: ignore[list-item]
    redis_settings = RedisSettings.from_dsn(url())
    max_jobs = 100
    poll_delay = 0.01
    keep_result = 0


async def enqueue(n: int) -> None:
    pool = await create_pool(WorkerSettings.redis_settings)
    for start in range(0, n, ENQUEUE_CHUNK):
        count = min(ENQUEUE_CHUNK, n - start)
        await asyncio.gather(*(pool.enqueue_job("incr") for _ in range(count)))
    await pool.aclose()


def main() -> None:
    mode, n = usage(sys.argv)
    quiet_logs()
    uvloop.install()  # arq's Worker takes asyncio.get_event_loop(): uvloop's, after this
    if mode == "enqueue":
        asyncio.run(enqueue(n))
    else:
        run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
