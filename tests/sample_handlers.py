"""A user handler module, loaded in tests through RINGEZ_HANDLERS as a user would."""

from ringez_worker.handlers import CallCompleted, Context, Router

router = Router()


@router.on("call.completed")
async def log_completed_call(event: CallCompleted, ctx: Context) -> None:
    ctx.log.info("sample.call_completed", duration=event.data.duration)
    await ctx.redis.rpush("sample:completed", event.call_id or "")
