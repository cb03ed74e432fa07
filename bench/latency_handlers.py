"""Records when the handler starts, for bench/latency.py.

The first thing the handler does is read the wall clock; the time is then stored in
the hash `bench:handler_start`, keyed by delivery id.
"""

import time

from ringez_worker.handlers import Context, Event, Router

START_KEY = "bench:handler_start"

router = Router()


@router.on("*")
async def record_start(event: Event, ctx: Context) -> None:
    started = time.time()
    await ctx.redis.hset(START_KEY, ctx.delivery_id, repr(started))
