"""`/analytics/…`: totals over the sandbox's calls and sessions."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from ringez_worker.sandbox.models import Call, SandboxError, iso
from ringez_worker.sandbox.state import SandboxState


def _bound(value: str | None) -> float | str | None:
    """A date bound: epoch seconds for a full ISO timestamp, the date itself for YYYY-MM-DD."""
    if value is None or len(value) <= 10:
        return value
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise SandboxError(400, "invalid_query", "dates must be ISO 8601") from None


def _within(call: Call, start: float | str | None, end: float | str | None) -> bool:
    day = iso(call.created_at)[:10]
    if isinstance(start, str) and day < start:
        return False
    if isinstance(start, float) and call.created_at < start:
        return False
    if isinstance(end, str) and day > end:
        return False
    return not (isinstance(end, float) and call.created_at > end)


def _hour(ts: float) -> str:
    return datetime.fromtimestamp(ts - ts % 3600, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def _by_hour(calls: list[Call]) -> dict[str, Any]:
    """The contract's `breakdown.by_hour[]`: per UTC hour of the call's creation."""
    hours: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        hours[_hour(c.created_at)].append(c)
    entries = []
    for hour, group in sorted(hours.items()):
        ended = [c for c in group if not c.active]
        entry: dict[str, Any] = {
            "hour": hour,
            "total_calls": len(group),
            "total_duration": sum(c.duration for c in ended),
            "total_cost": round(sum(c.cost for c in ended), 4),
            # A campaign call: a batch call carries its batch id in its metadata, and
            # the service's own campaigns dial one by one with their campaign id there.
            "campaign_calls": sum(
                "batch_id" in c.metadata or "campaign_id" in c.metadata for c in group
            ),
        }
        for status in ("completed", "failed", "busy", "no-answer"):
            entry[status] = sum(c.status == status for c in group)
        entries.append(entry)
    return {"by_hour": entries}


def call_metrics(
    state: SandboxState, session_id: str | None, start: str | None, end: str | None, group_by: str
) -> dict[str, Any]:
    """`GET /analytics/call-metrics`: totals, and a breakdown by day, status or hour."""
    lo, hi = _bound(start), _bound(end)
    calls = [
        c
        for c in state.calls.values()
        if (session_id is None or c.session_id == session_id) and _within(c, lo, hi)
    ]
    ended = [c for c in calls if not c.active]
    total_duration = sum(c.duration for c in ended)
    metrics = {
        "total_calls": len(calls),
        "total_duration": total_duration,
        "total_cost": round(sum(c.cost for c in ended), 4),
        "average_duration": round(total_duration / len(ended), 2) if ended else 0.0,
        "success_rate": (
            round(sum(c.status == "completed" for c in ended) / len(ended), 4) if ended else 0.0
        ),
    }
    if group_by == "hour":
        return {"metrics": metrics, "breakdown": _by_hour(calls)}
    groups: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        groups[iso(c.created_at)[:10] if group_by == "day" else c.status].append(c)
    return {
        "metrics": metrics,
        "breakdown": [
            {
                group_by: key,
                "calls": len(group),
                "duration": sum(c.duration for c in group),
                "cost": round(sum(c.cost for c in group), 4),
            }
            for key, group in sorted(groups.items())
        ],
    }


def spending(state: SandboxState, session_id: str | None) -> dict[str, Any]:
    """`GET /analytics/spending` for one session, or for all."""
    if session_id is not None:
        sessions = [state.get_session(session_id)]
    else:
        sessions = list(state.sessions.values())
    spent = round(sum(s.total_spent for s in sessions), 4)
    limits = [s.max_spend_limit for s in sessions if s.max_spend_limit is not None]
    limit = round(sum(limits), 4) if limits else None
    ended = [
        c
        for c in state.calls.values()
        if not c.active and any(c.session_id == s.session_id for s in sessions)
    ]
    average = round(spent / len(ended), 4) if ended else 0.0
    remaining = round(limit - spent, 4) if limit is not None else None
    return {
        "current_period": {
            "total_spent": spent,
            "budget_limit": limit,
            "budget_remaining": remaining,
        },
        "predictions": {
            "average_cost_per_call": average,
            "calls_remaining_in_budget": (
                int(remaining // average) if remaining is not None and average > 0 else None
            ),
        },
    }
