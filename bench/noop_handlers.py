"""A no-op handler on every event, for the drain benchmark."""

from handlers import Context, Event, Router

router = Router()


@router.on("*")
async def noop(event: Event, ctx: Context) -> None:
    return None
