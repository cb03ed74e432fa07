"""Handlers for the crash and shutdown tests: they count their runs in Redis, and `slow`
blocks until the test releases it, so a test can kill a worker in the middle of a job."""

from ringez_worker.handlers import Context, Event, Router

router = Router()


@router.on("call.completed")
async def quick(event: Event, ctx: Context) -> None:
    await ctx.redis.incr(f"t:quick:{event.call_id}")


@router.on("call.completed")
async def slow(event: Event, ctx: Context) -> None:
    await ctx.redis.incr(f"t:slow_started:{event.call_id}")
    await ctx.redis.blpop([f"t:release:{event.call_id}"], timeout=60)
    await ctx.redis.incr(f"t:slow_done:{event.call_id}")
