"""What the console shows, read from Redis: counters, the delivery log, calls."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from ringez_worker.api.ratelimit import RedisRateLimiter
from ringez_worker.keys import Keys
from ringez_worker.settings import Settings
from ringez_worker.worker.activity import minute
from ringez_worker.worker.metrics import presence_stale, queue_stats, worker_presence

SERIES = ("accepted", "duplicate", "rejected", "handled", "retried", "failed")
# The console reads at most this many log entries per page (the log's own cap bounds it too).
SCAN_LIMIT = 20_000


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def overview(redis: Redis, keys: Keys, settings: Settings) -> dict[str, Any]:
    """Everything on the overview page, as plain JSON-able values."""
    stats = await queue_stats(redis, keys)
    now_min = minute()
    minutes = list(range(now_min - 59, now_min + 1))
    async with redis.pipeline(transaction=False) as pipe:
        for m in minutes:
            pipe.hgetall(keys.stats(m))
        rows = await pipe.execute()
    series: dict[str, list[int]] = {name: [] for name in SERIES}
    reasons: dict[str, int] = {}
    for row in rows:
        counts = {_s(k): int(v) for k, v in row.items()}
        rejected = 0
        for name, value in counts.items():
            if name.startswith("rejected:"):
                rejected += value
                reason = name.removeprefix("rejected:")
                reasons[reason] = reasons.get(reason, 0) + value
        for name in SERIES:
            series[name].append(rejected if name == "rejected" else counts.get(name, 0))
    now_ms = time.time() * 1000  # the workers stamp `at_ms` with their wall clock
    workers = [
        {**w, "stale": presence_stale(w, now_ms)} for w in await worker_presence(redis, keys)
    ]
    return {
        "queue_depth": stats["depth"],
        "oldest_age_s": round(stats["oldest_age_s"], 1),
        "failed_events": stats["failed"],
        "workers": sorted(workers, key=lambda w: (w.get("host", ""), w.get("pid", 0))),
        # A killed worker's record outlives it by its TTL; it is shown, marked, not counted.
        "workers_alive": sum(not w["stale"] for w in workers),
        "jobs_running": sum(int(w.get("running", 0)) for w in workers if not w["stale"]),
        "budget": await _budget(redis, keys, settings),
        "totals": {name: sum(values) for name, values in series.items()},
        "series": series,
        "rejected_reasons": reasons,
        "first_minute": minutes[0],
    }


async def _budget(redis: Redis, keys: Keys, settings: Settings) -> dict[str, Any] | None:
    """The shared limiter's window (api/ratelimit.py): requests in the last period."""
    if settings.ringez_api_key is None:
        return None
    limiter = RedisRateLimiter.for_api_key(
        redis,
        settings.ringez_api_key,
        prefix=keys.prefix,
        limit=settings.ringez_rate_limit,
        period=settings.ringez_rate_period_seconds,
    )
    used = await limiter.used()
    limit = limiter.limit
    # A 429 with a long Retry-After holds the account, or one class (dialing), for that
    # long: say so, or a stalled campaign or callback queue looks like a bug.
    paused = [
        {"scope": scope, "minutes": round(seconds / 60, 1), "reason": reason}
        for scope, seconds, reason in await limiter.pauses()
    ]
    return {"used": used, "left": max(0, limit - used), "limit": limit, "paused": paused}


@dataclass
class Run:
    handler: str
    outcome: str
    attempt: int
    duration_ms: float
    at_ms: int
    error: str | None = None
    api: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Delivery:
    delivery_id: str
    received_ms: int
    status: str = "queued"
    body: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    duplicates: int = 0

    @property
    def event(self) -> str:
        return str(self.payload.get("event") or "")

    @property
    def data(self) -> dict[str, Any]:
        data = self.payload.get("data")
        return data if isinstance(data, dict) else {}

    @property
    def call_id(self) -> str:
        return str(self.data.get("call_id") or "")

    @property
    def session_id(self) -> str:
        return str(self.data.get("session_id") or "")

    @property
    def timestamp(self) -> str:
        return str(self.payload.get("timestamp") or "")


@dataclass
class Row:
    """One line of the deliveries page: a receipt or a duplicate of one."""

    delivery: Delivery
    at_ms: int
    duplicate: bool

    @property
    def status(self) -> str:
        return "duplicate" if self.duplicate else self.delivery.status


def _entry_ms(entry_id: Any) -> int:
    return int(_s(entry_id).split("-", 1)[0])


async def read_log(
    redis: Redis, keys: Keys, limit: int = SCAN_LIMIT
) -> tuple[dict[str, Delivery], list[Row]]:
    """Every delivery in the log with its runs, and the rows newest first."""
    entries = await redis.xrevrange(keys.deliveries, count=limit)
    failed = {_s(k) for k in await redis.hkeys(keys.failed)}  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    deliveries: dict[str, Delivery] = {}
    runs: dict[str, list[Run]] = {}
    dupes: list[tuple[str, int]] = []
    for entry_id, raw in reversed(entries):  # oldest first: runs follow their receipt
        f = {_s(k): v for k, v in raw.items()}
        kind, did, at = _s(f.get("k", b"")), _s(f.get("d", b"")), _entry_ms(entry_id)
        if kind == "r":
            job = orjson.loads(f["j"])  # the arq job: [delivery id, body, received ms]
            did = str(job["a"][0])
            body = str(job["a"][1])
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                payload = {}
            deliveries[did] = Delivery(
                did,
                int(job["a"][2]),
                body=body,
                payload=payload if isinstance(payload, dict) else {},
            )
        elif kind == "u":
            dupes.append((did, at))
        elif kind == "h":
            runs.setdefault(did, []).append(
                Run(
                    handler=_s(f["h"]),
                    outcome=_s(f["o"]),
                    attempt=int(f.get("t", 1)),
                    duration_ms=float(f.get("ms", 0)),
                    at_ms=at,
                    error=_s(f["e"]) if "e" in f else None,
                    api=orjson.loads(f["a"]) if "a" in f else [],
                )
            )
    idle = [did for did in deliveries if did not in runs]
    # No runs: still queued or running, or an event no handler takes (its job is gone).
    queued = set()
    if idle:
        scores = await redis.zmscore(keys.queue, idle)
        queued = {did for did, score in zip(idle, scores, strict=True) if score is not None}
    for did, delivery in deliveries.items():
        delivery.runs = runs.get(did, [])
        delivery.status = _status(delivery, did in failed, did in queued)
    rows = [Row(d, d.received_ms, False) for d in deliveries.values()]
    for did, at in dupes:
        if did in deliveries:
            deliveries[did].duplicates += 1
            rows.append(Row(deliveries[did], at, True))
    rows.sort(key=lambda r: r.at_ms, reverse=True)
    return deliveries, rows


def _status(delivery: Delivery, failed: bool, queued: bool) -> str:
    if failed:
        return "failed"
    if not delivery.runs:
        return "queued" if queued else "handled"
    latest: dict[str, str] = {}
    for run in delivery.runs:
        latest[run.handler] = run.outcome
    return "handled" if all(o == "ok" for o in latest.values()) else "retrying"


def filter_rows(
    rows: list[Row],
    *,
    event: str = "",
    status: str = "",
    call_id: str = "",
    session_id: str = "",
    prefix: str = "",
) -> list[Row]:
    out = []
    for row in rows:
        d = row.delivery
        if event and d.event != event:
            continue
        if status and row.status != status:
            continue
        if call_id and d.call_id != call_id:
            continue
        if session_id and d.session_id != session_id:
            continue
        if prefix and not d.delivery_id.startswith(prefix.lower()):
            continue
        out.append(row)
    return out


@dataclass
class CallView:
    call_id: str
    session_id: str
    events: list[Delivery]
    intents: list[tuple[str, str]]
    sentiments: list[float]
    transfers: list[dict[str, Any]]
    recharges: list[dict[str, Any]]
    escalation: dict[str, Any] | None
    summary: dict[str, Any] | None
    quality: dict[str, str] | None = None  # the quality monitor's record, when it ran


def calls_index(deliveries: dict[str, Delivery]) -> list[dict[str, Any]]:
    """Calls in the log, the most recently active first."""
    calls: dict[str, dict[str, Any]] = {}
    for d in deliveries.values():
        if not d.call_id:
            continue
        c = calls.setdefault(
            d.call_id,
            {
                "call_id": d.call_id,
                "session_id": d.session_id,
                "events": 0,
                "last_ms": 0,
                "last_event": "",
            },
        )
        c["events"] += 1
        if d.received_ms >= c["last_ms"]:
            c["last_ms"], c["last_event"] = d.received_ms, d.event
    return sorted(calls.values(), key=lambda c: c["last_ms"], reverse=True)


async def call_view(
    redis: Redis, keys: Keys, deliveries: dict[str, Delivery], call_id: str
) -> CallView | None:
    events = [d for d in deliveries.values() if d.call_id == call_id]
    summary_raw, escalation_raw = await redis.mget(
        keys.summary(call_id), keys.call_state(call_id, "escalation")
    )
    if not events and summary_raw is None:
        return None
    raw_quality = await redis.hgetall(keys.quality(call_id))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    session = events[0].session_id if events else ""
    # balance.low carries no call id: the session's episodes during the call belong to it.
    if session:
        events += [
            d
            for d in deliveries.values()
            if d.event == "balance.low" and d.session_id == session and d.call_id != call_id
        ]
    # The sender's own timestamp orders the call; the receive time breaks ties.
    events.sort(key=lambda d: (d.timestamp, d.received_ms))
    intents: list[tuple[str, str]] = []
    sentiments: list[float] = []
    transfers: list[dict[str, Any]] = []
    recharges: list[dict[str, Any]] = []
    for d in events:
        for run in d.runs:
            for api in run.api:
                result = api.get("r") or {}
                path = str(api.get("p", ""))
                if path.endswith("/intent-detection") and "intent" in result:
                    intents.append((str(result["intent"]), str(d.data.get("text", ""))))
                elif path.endswith("/sentiment-analysis") and "sentiment_score" in result:
                    sentiments.append(float(result["sentiment_score"]))
                elif path.endswith("/actions") and result.get("action") == "transfer":
                    transfers.append(
                        {"status": api.get("s"), "ms": api.get("ms"), "attempt": run.attempt}
                    )
                elif path.endswith("/add-credits"):
                    recharges.append({**result, "http": api.get("s")})
    return CallView(
        call_id=call_id,
        session_id=session,
        events=events,
        intents=intents,
        sentiments=sentiments,
        transfers=transfers,
        recharges=recharges,
        escalation=orjson.loads(escalation_raw) if escalation_raw else None,
        summary=orjson.loads(summary_raw) if summary_raw else None,
        quality=_quality(raw_quality),
    )


def _quality(raw: dict[bytes, bytes]) -> dict[str, str] | None:
    """The record's fields as text, the mean MOS worked out; None when not monitored."""
    if not raw:
        return None
    record = {k.decode(): v.decode() for k, v in raw.items()}
    total, samples = record.pop("mos_sum", None), record.pop("mos_samples", None)
    if total is not None and samples and int(samples) > 0:
        record["mos_mean"] = f"{float(total) / int(samples):.2f}"
    return record
