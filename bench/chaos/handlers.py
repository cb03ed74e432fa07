"""Handlers the chaos run's workers load (`RINGEZ_HANDLERS=bench.chaos.handlers`).

Two handlers on every event, next to the built-in agents:

- `chaos.effect`: a user-style side effect, `HINCRBY chaos:effects <delivery> 1`, in its
  own round trip after the handler's "work". On the first try of about `CHAOS_FAIL_RATE`
  of the deliveries (5% by default, chosen by the delivery id) it raises first, so the
  run exercises the dispatcher's retries. Each run is also logged in `chaos:log`
  (delivery, pid, try, time) so a re-run can be explained afterwards: a worker killed
  between this effect and the service's completion record re-runs it (at-least-once).
  With `CHAOS_SLOW_RATE` > 0, on the first try of that share of the deliveries (another
  draw from the id) it first sleeps `CHAOS_SLOW_SECONDS`, longer than a job lease: a job
  that loses its lease while its worker still runs it is run again by another worker,
  and both runs count. (First tries only: a job slower than a worker's life under the
  kills would otherwise never finish.)
- `chaos.exact`: `HINCRBY chaos:runs <delivery> 1` in one MULTI with the service's own
  completion record for this handler (`rz:done:<delivery>` field `chaos.exact`), so no
  crash can separate the two. A count above one therefore means the service ran a
  handler again although its success was recorded, or ran one delivery twice at once.
"""

from __future__ import annotations

import asyncio
import os
import time

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.keys import Keys

PREFIX = "chaos"
EFFECTS = f"{PREFIX}:effects"
RUNS = f"{PREFIX}:runs"
LOG = f"{PREFIX}:log"
EXACT = "chaos.exact"
EFFECT = "chaos.effect"

router = Router()


class ChaosFailure(Exception):
    """Raised on purpose; retryable, like most handler failures."""


def drawn(delivery_id: str, rate: float, draw: int = 0) -> bool:
    """A stable draw from the delivery id: True for about `rate` of the deliveries."""
    digits = delivery_id[8 * draw : 8 * draw + 8]
    return int(digits, 16) / 0x1_0000_0000 < rate


@router.on("*", name=EFFECT)
async def effect(event: Event, ctx: Context) -> None:
    fail_rate = float(os.environ.get("CHAOS_FAIL_RATE", "0.05"))
    if ctx.job_try == 1 and drawn(ctx.delivery_id, fail_rate):
        raise ChaosFailure("failing the first try on purpose")
    slow_rate = float(os.environ.get("CHAOS_SLOW_RATE", "0"))
    if ctx.job_try == 1 and drawn(ctx.delivery_id, slow_rate, draw=1):
        await asyncio.sleep(float(os.environ.get("CHAOS_SLOW_SECONDS", "8")))
    entry = f"{ctx.delivery_id}|{os.getpid()}|{ctx.job_try}|{int(time.time() * 1000)}"
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(EFFECTS, ctx.delivery_id, 1)
        pipe.rpush(LOG, entry)
        await pipe.execute()


@router.on("*", name=EXACT)
async def exact(event: Event, ctx: Context) -> None:
    done = Keys(prefix=ctx.settings.key_prefix, queue=ctx.settings.queue_name).done(ctx.delivery_id)
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(RUNS, ctx.delivery_id, 1)
        pipe.hset(done, EXACT, int(time.time() * 1000))
        pipe.expire(done, ctx.settings.handler_state_ttl_seconds)
        await pipe.execute()
