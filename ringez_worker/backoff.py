"""The one backoff: exponential with full jitter (the API client's retries, job retries,
the worker's waits on a refusing Redis and its in-process restarts all use it)."""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    Full jitter: workers that failed together (a Redis blip, a 503 burst) do not all
    retry at the same instant.
    """
    if base <= 0:
        return 0.0
    return (rng or random).uniform(0, min(cap, base * 2 ** (attempt - 1)))
