"""What a handler gets besides the event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import structlog
    from redis.asyncio import Redis

    from ringez_worker.settings import Settings


@dataclass(slots=True)
class Context:
    """Per-delivery context: shared clients plus a logger bound to this delivery."""

    delivery_id: str
    redis: Redis
    settings: Settings
    log: structlog.stdlib.BoundLogger
    ringez: Any = None  # the Ringez API client, when the worker has one configured
    job_try: int = 1
    extras: dict[str, Any] = field(default_factory=dict)


class Superseded(Exception):
    """Another attempt at the same delivery took this handler's work over.

    Raise it from a handler that finds it was presumed dead (its lease lapsed and a
    retry took over): the run is recorded neither as done nor as failed, so the attempt
    that owns the work decides the outcome.
    """
