"""Handlers for the scale test: count each delivery's runs in one Redis hash.

Loaded by worker processes through RINGEZ_HANDLERS. A count above 1 for any delivery
id means an event was handled twice; a missing id means it was lost.
"""

from ringez_worker.handlers import Context, Event, Router

COUNTS_KEY = "scale:runs"

router = Router()


@router.on("*")
async def count_run(event: Event, ctx: Context) -> None:
    await ctx.redis.hincrby(COUNTS_KEY, ctx.delivery_id, 1)
