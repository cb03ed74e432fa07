"""Priority classes of the shared API budget, and the class each endpoint spends by default.

One account budget (1,000 requests/hour on the standard tier) serves the live-call agents,
campaign dialing, analysis and background polling. Ordering alone cannot free a full
sliding window, so each class below the top may only fill the window up to its own
ceiling: the last part of the window is kept for live-call actions (a transfer must not
wait an hour behind a campaign that spent the budget).
"""

from __future__ import annotations

import math
import re
from enum import IntEnum


class Priority(IntEnum):
    """Lower value, more important. The names are what logs, metrics and settings show."""

    LIVE = 0  # actions on a live call: transfer, hangup, play, collect, recharge
    DIAL = 1  # placing calls: campaigns, callbacks
    ANALYSIS = 2  # AI helpers: sentiment, intent, routing, synthesis
    BACKGROUND = 3  # reads after the fact and polling: call status, transcripts, analytics

    @property
    def label(self) -> str:
        return self.name.lower()


# How much of the live reserve each class gives up: DIAL stops at 1 - r of the window,
# ANALYSIS at 1 - 1.5 r, BACKGROUND at 1 - 2 r (r = RINGEZ_RATE_RESERVE_LIVE, 10 % by
# default: 100 / 90 / 85 / 80 % of 1,000 requests).
_RESERVE_SHARE = {
    Priority.LIVE: 0.0,
    Priority.DIAL: 1.0,
    Priority.ANALYSIS: 1.5,
    Priority.BACKGROUND: 2.0,
}


def ceilings(limit: int, reserve_live: float) -> dict[Priority, int]:
    """The most requests each class may find in the window and still be granted one."""
    if not 0.0 <= reserve_live < 0.5:
        raise ValueError("reserve_live must be in [0, 0.5)")
    return {
        p: max(1, limit - math.floor(limit * reserve_live * share))
        for p, share in _RESERVE_SHARE.items()
    }


_CALL_ACTION = re.compile(r"^/calls/[^/]+/actions$")
_CALL = re.compile(r"^/calls/[^/]+$")


def default_priority(method: str, path: str) -> Priority:
    """The class a request spends when its caller names none (RingezClient.with_priority)."""
    if _CALL_ACTION.match(path) or path.startswith("/wallet/"):
        return Priority.LIVE
    if method == "DELETE" and _CALL.match(path):
        return Priority.LIVE  # hang up
    if path in ("/calls/initiate", "/batch/calls", "/sessions/create"):
        return Priority.DIAL
    if path.startswith("/agents/"):
        return Priority.ANALYSIS
    return Priority.BACKGROUND
