"""What a handler gets besides the event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import structlog
    from redis.asyncio import Redis

    from ringez_worker.api import RingezClient
    from ringez_worker.settings import Settings


class RingezNotConfigured(RuntimeError):
    """A handler used `ctx.ringez` on a worker that has no RINGEZ_API_KEY."""

    retryable = False  # a retry cannot set the key: straight to the failed-events record


@dataclass(slots=True)
class Context:
    """Per-delivery context: shared clients plus a logger bound to this delivery.

    `ctx.ringez` is the typed API client (`RingezClient`), so an editor and a type
    checker follow `ctx.ringez.calls.transfer(...)`; `ctx.has_ringez` says whether the
    worker has one (RINGEZ_API_KEY set).
    """

    delivery_id: str
    redis: Redis
    settings: Settings
    log: structlog.stdlib.BoundLogger
    client: RingezClient | None = None
    job_try: int = 1
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def ringez(self) -> RingezClient:
        """The Ringez API client; raises RingezNotConfigured when the worker has none."""
        if self.client is None:
            raise RingezNotConfigured("the Ringez API client needs RINGEZ_API_KEY")
        return self.client

    @property
    def has_ringez(self) -> bool:
        return self.client is not None


class Superseded(Exception):
    """Another attempt at the same delivery took this handler's work over.

    Raise it from a handler that finds it was presumed dead (its lease lapsed and a
    retry took over): the run is recorded neither as done nor as failed, and the job is
    deferred (not a try) so that it outlives the attempt that owns the work; run again,
    the handler's completion record says whether that attempt succeeded.
    """
