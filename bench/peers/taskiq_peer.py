"""taskiq 0.13 + taskiq-redis 1.2 peer: the stream broker (acks) or the list broker.

`BENCH_TASKIQ_BROKER=stream|list` picks the broker. The worker is taskiq's own CLI
(`taskiq worker taskiq_peer:broker --workers 1 --max-async-tasks 100`), which uses
uvloop when installed and runs the jobs in a child process.

    BENCH_REDIS_URL=... python taskiq_peer.py enqueue 20000
"""

from __future__ import annotations

import asyncio
import os
import sys

import uvloop
from _incr import ENQUEUE_CHUNK, incr, url, usage
from taskiq_redis import ListQueueBroker, RedisStreamBroker

# consumer_id="0": the consumer group reads the stream from its start, so it sees the
# jobs queued before the worker started (its default "$" would skip them).
broker = (
    ListQueueBroker(url())
    if os.environ.get("BENCH_TASKIQ_BROKER") == "list"
    else RedisStreamBroker(url(), consumer_id="0")
)


@broker.task(task_name="incr")
async def job() -> None:
    await incr()


async def enqueue(n: int) -> None:
    await broker.startup()
    for start in range(0, n, ENQUEUE_CHUNK):
        count = min(ENQUEUE_CHUNK, n - start)
        await asyncio.gather(*(job.kiq() for _ in range(count)))
    await broker.shutdown()


def main() -> None:
    mode, n = usage(sys.argv)
    if mode != "enqueue":
        raise SystemExit("the taskiq worker is taskiq's CLI: taskiq worker taskiq_peer:broker")
    uvloop.run(enqueue(n))


if __name__ == "__main__":
    main()
