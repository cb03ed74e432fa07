"""Fault injection: make API requests answer 503 or 429, reproducibly for a seed."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict
from typing import Any

from ringez_worker.sandbox.config import FaultConfig

CODES = {429: "rate_limited", 500: "internal_error", 502: "bad_gateway", 503: "service_unavailable"}


def validate(config: FaultConfig) -> FaultConfig:
    """Return `config` if it is usable; raise ValueError naming the bad field otherwise."""
    for name in ("rate_503", "rate_429"):
        value = getattr(config, name)
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    if config.rate_503 + config.rate_429 > 1.0:
        raise ValueError("rate_503 + rate_429 must be at most 1")
    if not isinstance(config.retry_after_seconds, int) or config.retry_after_seconds < 0:
        raise ValueError("retry_after_seconds must be a non-negative integer")
    if not isinstance(config.seed, int):
        raise ValueError("seed must be an integer")
    if not isinstance(config.fail_next, list) or not all(
        isinstance(s, int) and (s == 0 or 400 <= s <= 599) for s in config.fail_next
    ):
        raise ValueError("fail_next must be a list of 4xx/5xx statuses (0 lets one through)")
    lag = config.balance_lag_seconds
    if not isinstance(lag, int | float) or isinstance(lag, bool) or lag < 0:
        raise ValueError("balance_lag_seconds must be a non-negative number")
    if not isinstance(config.path_prefix, str):
        raise ValueError("path_prefix must be a string")
    return config


class FaultInjector:
    """Decides, request by request, whether to answer with an injected error status."""

    def __init__(self, config: FaultConfig) -> None:
        self.configure(config)

    def configure(self, config: FaultConfig) -> None:
        """Replace the faults; the random sequence restarts from the seed."""
        self.config = validate(config)
        self._rng = random.Random(config.seed)
        self._script = list(config.fail_next)
        self.injected: Counter[int] = Counter()

    def decide(self, path: str) -> int | None:
        """The status to answer `path` with instead of handling it, or None."""
        if not path.startswith(self.config.path_prefix):
            return None
        if self._script:
            status = self._script.pop(0)
        elif self.config.rate_503 + self.config.rate_429 > 0:
            draw = self._rng.random()
            if draw < self.config.rate_503:
                status = 503
            elif draw < self.config.rate_503 + self.config.rate_429:
                status = 429
            else:
                status = 0
        else:
            status = 0
        if not status:
            return None
        self.injected[status] += 1
        return status

    def headers(self, status: int) -> dict[str, str]:
        if status == 429:
            return {"Retry-After": str(self.config.retry_after_seconds)}
        return {}

    def view(self) -> dict[str, Any]:
        return {
            **asdict(self.config),
            "pending_fail_next": list(self._script),
            "injected": {str(k): v for k, v in sorted(self.injected.items())},
        }
