"""Completion records that ride with the job's end instead of a round trip of their own.

Under `RingezWorker` each job run gets a `Completions` (a context variable, so the
dispatcher's handler tasks see it). The *last* of a delivery's handlers to succeed puts
its completion record here rather than writing it at once; the worker's finisher then
writes it in the same Lua call that ends the job (removes it from the queue, or
re-queues it for a retry), batched with the other jobs ending at the same time. So a
record is never written after the job is gone, and a job whose record is not written
(a crash before that call) is still queued and runs again. Handlers with siblings still
running write their records at once, as before: a slow sibling does not widen the
window in which a crash re-runs them.

Without a worker that collects them (plain `arq`, tests calling the dispatcher), there
is no `Completions` and every record is written at once.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(slots=True)
class Run:
    """One successful handler run still to be recorded."""

    done_key: str
    delivery_id: str
    handler: str
    at_ms: int
    job_try: int
    duration_ms: float
    api_calls: bytes  # JSON, b"" when it made none


@dataclass(slots=True)
class Completions:
    """What one job run leaves for the worker to write when the job ends."""

    runs: list[Run] = field(default_factory=list)
    # How many of the delivery's handlers are still running (set by the dispatcher).
    running: int = 0
    # A retry, a deferral or a failed-events record keeps the records for
    # HANDLER_STATE_TTL_SECONDS instead of the short DONE_RECORD_TTL_SECONDS.
    keep: bool = False


COMPLETIONS: ContextVar[Completions | None] = ContextVar("ringez_completions", default=None)
