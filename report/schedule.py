"""REPORT_CRON inside the worker: each scheduled time is rendered once, however many workers.

Every worker runs the same schedule; at each scheduled time they race for a Redis claim
(`SET NX` on a key named by that time) and only the winner renders. The clock is read
again at least every second while waiting, so a wall-clock jump (NTP, a suspended VM)
neither skips a time nor fires it early.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from redis.asyncio import Redis

from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger

log = get_logger("ringez.report")

# Kept well past any clock skew between workers: a lagging worker still finds the claim.
CLAIM_TTL_SECONDS = 2 * 24 * 3600

Job = Callable[[datetime], Awaitable[None]]


def _wall() -> float:
    """The wall clock, looked up on each call (tests move it instead of waiting a minute)."""
    return time.time()


def claim_name(scheduled: datetime) -> str:
    return scheduled.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def report_day(scheduled: datetime, which: str) -> date:
    """The day a report scheduled at `scheduled` (local time) covers."""
    return (scheduled - timedelta(days=1)).date() if which == "previous" else scheduled.date()


class ReportScheduler:
    """Waits for each time of `expr` (in `tz`) and runs `job` there if this worker wins."""

    def __init__(
        self,
        expr: str,
        tz: ZoneInfo,
        redis: Redis,
        keys: Keys,
        owner: str,
        job: Job,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.expr, self.tz, self.redis, self.keys = expr, tz, redis, keys
        self.owner, self.job = owner, job
        self.clock = clock if clock is not None else lambda: _wall()
        self.fired: list[datetime] = []  # times reached, won or lost (tests and logs)
        self.won: list[datetime] = []

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), self.tz)

    async def run(self) -> None:
        times = croniter(self.expr, self._now())
        while True:
            scheduled: datetime = times.get_next(datetime)
            while (delay := scheduled.timestamp() - self.clock()) > 0:  # noqa: ASYNC110
                # A timer, not an event to wait on: short naps re-read a clock that may jump.
                await asyncio.sleep(min(delay, 1.0))
            await self.fire(scheduled)
            if self._now() > scheduled + timedelta(minutes=1):
                # Far behind (a clock jump, a long render): resume from now, not from the past.
                times = croniter(self.expr, self._now())

    async def fire(self, scheduled: datetime) -> bool:
        """Claim `scheduled`; run the job if this worker got it. True if it ran here."""
        self.fired.append(scheduled)
        key = self.keys.report_claim(claim_name(scheduled))
        try:
            won = await self.redis.set(key, self.owner, nx=True, ex=CLAIM_TTL_SECONDS)
        except Exception as exc:
            log.warning(
                "report.claim_failed", scheduled=claim_name(scheduled), error=type(exc).__name__
            )
            return False
        if not won:
            log.debug("report.claimed_elsewhere", scheduled=claim_name(scheduled))
            return False
        self.won.append(scheduled)
        try:
            await self.job(scheduled)
        except Exception as exc:
            # The claim stays: one failed render is not retried by every other worker.
            log.error("report.failed", scheduled=claim_name(scheduled), error=repr(exc))
        return True
