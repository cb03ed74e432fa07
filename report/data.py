"""A day's figures: the API's hourly call metrics and the service's own Redis records.

Each figure says where it came from (`SOURCES`): the API's `analytics/call-metrics`
(grouped by hour), the support agent's call summaries, the recharge agent's per-charge
records and the per-call quality records. `analytics/spending` has no date, so it is not
used: the day's cost is call-metrics' `total_cost`, with the summaries' sum beside it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from redis.asyncio import Redis

from ringez_worker.api.client import RingezClient
from ringez_worker.keys import Keys

API = "API analytics/call-metrics (group_by=hour)"
SUMMARIES = "call summaries (Redis rz:summary:*)"
RECHARGES = "recharge records (Redis, one per charge)"
QUALITY = "quality records (Redis rz:call:*:quality:record)"
OUTCOMES = ("completed", "failed", "busy", "no-answer")


@dataclass
class Hour:
    """One local hour of the day (0-23) in the report's time zone."""

    hour: int
    calls: int = 0
    cost: float = 0.0
    duration: float = 0.0
    campaign_calls: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    escalations: int = 0
    recharges: int = 0


@dataclass
class DayData:
    """Everything the charts and the table are drawn from; plain data, JSON-friendly."""

    day: str
    timezone: str
    session_id: str | None
    generated_at: float
    totals: dict[str, float]
    hours: list[Hour]
    summaries: list[dict[str, Any]]
    recharges: list[dict[str, Any]]
    mos: list[float]

    @property
    def total_calls(self) -> int:
        return int(self.totals.get("total_calls") or 0)

    @property
    def peak_hour(self) -> int | None:
        busiest = max(self.hours, key=lambda h: h.calls)
        return busiest.hour if busiest.calls else None

    @property
    def transfers(self) -> int:
        return sum(s.get("escalated") == "transferred" for s in self.summaries)

    @property
    def campaign_calls(self) -> int:
        return sum(h.campaign_calls for h in self.hours)

    def outcome_totals(self) -> dict[str, int]:
        return {o: sum(h.outcomes[o] for h in self.hours) for o in OUTCOMES}

    def completed_seconds(self) -> list[float]:
        """Durations of the day's completed calls (the durations chart)."""
        return [
            float(s["duration"])
            for s in self.summaries
            if s.get("outcome") == "completed" and s.get("duration") is not None
        ]

    def empty_sentence(self, chart: str) -> str | None:
        """Why `chart` has nothing to draw, or None when it has: one sentence that the
        chart shows instead of an empty axis and the page repeats as text."""
        nothing = {
            "volume": (not self.total_calls, "no calls on this day"),
            "outcomes": (not sum(self.outcome_totals().values()), "no ended calls on this day"),
            "durations": (not self.completed_seconds(), "no completed calls on this day"),
            "cost": (not any(h.cost for h in self.hours), "no call cost on this day"),
            "actions": (
                not self.transfers and not self.recharges,
                "no escalations or recharges on this day",
            ),
            "quality": (not self.mos, "no quality data for this day's calls"),
        }
        empty, sentence = nothing[chart]
        return sentence if empty else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def day_window(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of `day` in `tz`, in UTC (a DST day is 23 or 25 hours long)."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    nxt = day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _local_hour(ts: float, tz: ZoneInfo) -> int:
    return datetime.fromtimestamp(ts, tz).hour


async def _summaries(
    redis: Redis, keys: Keys, lo: float, hi: float, session_id: str | None
) -> list[dict[str, Any]]:
    # Summaries carry no index; SCAN reads them in batches without blocking Redis, and
    # they expire after SUMMARY_TTL_SECONDS, so the scan stays bounded.
    found: list[dict[str, Any]] = []
    batch: list[bytes] = []

    async def flush() -> None:
        for raw in await redis.mget(batch) if batch else []:
            if not raw:
                continue
            summary = orjson.loads(raw)
            at = summary.get("ended_at")
            if at is None or not lo <= float(at) < hi:
                continue
            if session_id is None or summary.get("session_id") == session_id:
                found.append(summary)
        batch.clear()

    async for key in redis.scan_iter(match=keys.summary("*"), count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await flush()
    await flush()
    return sorted(found, key=lambda s: s["ended_at"])


async def _recharges(
    redis: Redis, keys: Keys, lo: float, hi: float, session_id: str | None
) -> list[dict[str, Any]]:
    names = await redis.zrangebyscore(keys.recharges, lo, f"({hi}")
    records = [orjson.loads(r) for r in (await redis.mget(names) if names else []) if r]
    return [r for r in records if session_id is None or r.get("session_id") == session_id]


async def _mos(redis: Redis, keys: Keys, call_ids: list[str]) -> list[float]:
    if not call_ids:
        return []
    # One MOS per call: the mean of the monitor's polls.
    async with redis.pipeline(transaction=False) as pipe:
        for call_id in call_ids:
            pipe.hmget(keys.quality(call_id), ["mos_sum", "mos_samples"])
        replies = await pipe.execute()
    scores = []
    for total, samples in replies:
        if total is not None and samples is not None and int(samples) > 0:
            scores.append(float(total) / int(samples))
    return scores


async def gather_day(
    ringez: RingezClient,
    redis: Redis,
    keys: Keys,
    day: date,
    tz: ZoneInfo,
    session_id: str | None = None,
) -> DayData:
    """The figures for `day` (a calendar day in `tz`), optionally for one session."""
    start, end = day_window(day, tz)
    metrics = await ringez.analytics.call_metrics(
        session_id=session_id,
        start_date=_z(start),
        end_date=_z(end - timedelta(milliseconds=1)),
        group_by="hour",
    )
    hours = [Hour(h) for h in range(24)]
    for entry in metrics.by_hour:
        at = datetime.fromisoformat(entry.hour.replace("Z", "+00:00")).timestamp()
        h = hours[_local_hour(at, tz)]  # a DST day's repeated hour adds into one bar
        h.calls += entry.total_calls
        h.cost += entry.total_cost or 0.0
        h.duration += entry.total_duration or 0.0
        h.campaign_calls += entry.campaign_calls or 0
        for outcome in OUTCOMES:
            h.outcomes[outcome] += int(getattr(entry, outcome.replace("-", "_")) or 0)
    summary = metrics.metrics
    totals = {
        "total_calls": (summary.total_calls if summary else None) or 0,
        "success_rate": (summary.success_rate if summary else None) or 0.0,
        "average_duration": (summary.average_duration if summary else None) or 0.0,
        "total_cost": (summary.total_cost if summary else None) or 0.0,
        "total_duration": (summary.total_duration if summary else None) or 0.0,
    }
    lo, hi = start.timestamp(), end.timestamp()
    summaries = await _summaries(redis, keys, lo, hi, session_id)
    recharges = await _recharges(redis, keys, lo, hi, session_id)
    for s in summaries:
        if s.get("escalated") == "transferred":
            hours[_local_hour(float(s["ended_at"]), tz)].escalations += 1
    for r in recharges:
        hours[_local_hour(float(r["charged_at"]), tz)].recharges += 1
    mos = await _mos(redis, keys, [s["call_id"] for s in summaries if s.get("call_id")])
    return DayData(
        day=day.isoformat(),
        timezone=str(tz.key),
        session_id=session_id,
        generated_at=time.time(),
        totals=totals,
        hours=hours,
        summaries=summaries,
        recharges=recharges,
        mos=mos,
    )
