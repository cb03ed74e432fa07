"""What a campaign run did, read from the sandbox's own calls and request log: the
checks the campaign tests and bench/campaign_chaos.py share."""

from __future__ import annotations

from collections import Counter
from typing import Any


def calls_per_attempt(state: Any, session_id: str) -> Counter[tuple[str, int]]:
    """Distinct calls Ringez created per contact attempt (from each call's metadata)."""
    return Counter(
        (c.metadata.get("contact_id"), c.metadata.get("attempt"))
        for c in campaign_calls(state, session_id)
    )


def campaign_calls(state: Any, session_id: str) -> list[Any]:
    return [c for c in state.calls.values() if c.session_id == session_id]


def calls_per_number(state: Any, session_id: str) -> Counter[str]:
    return Counter(c.to_number for c in campaign_calls(state, session_id))


def most_at_once(state: Any, session_id: str, now: float) -> int:
    """The most campaign calls alive at one moment (created, not yet ended)."""
    edges: list[tuple[float, int]] = []
    for c in campaign_calls(state, session_id):
        edges.append((c.created_at, 1))
        edges.append((c.ended_at if c.ended_at is not None else now, -1))
    live = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start
        live += step
        peak = max(peak, live)
    return peak


def most_in_a_minute(state: Any, session_id: str) -> int:
    """The most calls Ringez created within any 60 s."""
    times = sorted(c.created_at for c in campaign_calls(state, session_id))
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= 60:
            start += 1
        best = max(best, end - start + 1)
    return best
