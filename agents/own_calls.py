"""The one guard that keeps the support and escalation agents off the service's own
calls (callback calls, campaign calls): those agents must not analyse or transfer them.

Each agent that places calls names its call map (`prefix, call_id -> key`); a handler
behind the guard runs only for a call in none of them (one EXISTS over all the keys).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ringez_worker.handlers import Context, Router

CallMark = Callable[[str, str], str]


def leave_own_calls_alone(router: Router, marks: Sequence[CallMark]) -> Router:
    """`router`'s handlers, skipping calls found under any of `marks`."""
    if not marks:
        return router
    guarded = Router()
    for handler in router.handlers:
        # `add` appends "@<event>" again (not for "*" handlers, whose names carry none).
        base = handler.name.rsplit("@", 1)[0]
        guarded.add(handler.event, _skipping(handler.func, tuple(marks)), name=base)
    return guarded


def _skipping(func: Any, marks: tuple[CallMark, ...]) -> Any:
    async def guarded(event: Any, ctx: Context) -> Any:
        call_id = getattr(event, "call_id", None)
        if call_id:
            prefix = ctx.settings.key_prefix
            if await ctx.redis.exists(*(mark(prefix, call_id) for mark in marks)):
                return None
        return await func(event, ctx)

    return guarded
