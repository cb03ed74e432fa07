"""One handler on every event doing one INCR through `ctx.redis`: the peers' job.

`bench/drain_peers.py` runs the project's worker with `RINGEZ_HANDLERS=bench.incr_handlers`
so that its per-job work is the same as every peer's (`bench/peers/_incr.py`).

`BENCH_CPROFILE=<path>` profiles the whole worker process with cProfile from the
moment this module is imported and writes the stats to <path> at exit: the fallback
for a sandbox where py-spy may not attach (ptrace refused).
"""

from __future__ import annotations

import atexit
import cProfile
import os

from ringez_worker.handlers import Context, Event, Router

COUNTER = "bench:incr"  # the key the bench polls, as in bench/peers/_incr.py

router = Router()


@router.on("*")
async def incr(event: Event, ctx: Context) -> None:
    await ctx.redis.incr(COUNTER)


def _profile_to(path: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    atexit.register(lambda: (profiler.disable(), profiler.dump_stats(path)))


if os.environ.get("BENCH_CPROFILE"):
    _profile_to(os.environ["BENCH_CPROFILE"])
