"""Which Ringez API requests a delivery's handler caused, for the console's delivery log.

The dispatcher calls `start()` in each handler's own task (asyncio copies the context
per task, so handlers running side by side keep separate lists); the transport calls
`record()` after each HTTP attempt. Outside a handler nothing is recorded.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

# Per request kept: method, path (no query string: it may carry ids, never secrets, but
# the path is enough), status (0: no answer), duration, and for the AI helpers the few
# answer fields the console's call view shows (what the agent decided).
_CALLS: ContextVar[list[dict[str, Any]] | None] = ContextVar("ringez_api_calls", default=None)
_MAX_CALLS = 50
_RESULT_FIELDS = (
    "action",
    "intent",
    "sentiment_score",
    "sentiment",
    "route_to",
    "status",
    "minutes_added",
)


def start() -> list[dict[str, Any]]:
    """Begin recording in the current task; returns the list the requests go into."""
    calls: list[dict[str, Any]] = []
    _CALLS.set(calls)
    return calls


def record(method: str, path: str, status: int, duration_ms: float, answer: Any = None) -> None:
    calls = _CALLS.get()
    if calls is None or len(calls) >= _MAX_CALLS:
        return
    entry: dict[str, Any] = {"m": method, "p": path, "s": status, "ms": round(duration_ms, 1)}
    if isinstance(answer, dict) and (
        path.startswith(("/agents/", "/wallet/")) or path.endswith("/actions")
    ):
        picked = {
            k: answer[k]
            for k in _RESULT_FIELDS
            if isinstance(answer.get(k), str | int | float) and not isinstance(answer[k], bool)
        }
        if picked:
            entry["r"] = picked
    calls.append(entry)
