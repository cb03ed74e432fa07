"""A no-op handler on every event, for the drain benchmark."""

from ringez_worker.handlers import Context, Event, Router

router = Router()


@router.on("*")
async def noop(event: Event, ctx: Context) -> None:
    return None
