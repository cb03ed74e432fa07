"""`/analytics/…`: totals over the sandbox's calls and sessions."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ringez_worker.sandbox.models import Call, iso
from ringez_worker.sandbox.state import SandboxState


def call_metrics(
    state: SandboxState, session_id: str | None, start: str | None, end: str | None, group_by: str
) -> dict[str, Any]:
    """`GET /analytics/call-metrics`: totals, and a breakdown by day or status."""
    calls = [
        c
        for c in state.calls.values()
        if (session_id is None or c.session_id == session_id)
        and (start is None or iso(c.created_at)[:10] >= start[:10])
        and (end is None or iso(c.created_at)[:10] <= end[:10])
    ]
    ended = [c for c in calls if not c.active]
    total_duration = sum(c.duration for c in ended)
    groups: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        groups[iso(c.created_at)[:10] if group_by == "day" else c.status].append(c)
    return {
        "metrics": {
            "total_calls": len(calls),
            "total_duration": total_duration,
            "total_cost": round(sum(c.cost for c in ended), 4),
            "average_duration": round(total_duration / len(ended), 2) if ended else 0.0,
            "success_rate": (
                round(sum(c.status == "completed" for c in ended) / len(ended), 4) if ended else 0.0
            ),
        },
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
