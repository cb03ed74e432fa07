"""Runs one delivery's handlers: each at most once to success; failures retried, then recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import orjson
from arq import Retry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ringez_worker.api import trace
from ringez_worker.api.errors import RateLimited
from ringez_worker.handlers.context import Context, Superseded
from ringez_worker.handlers.events import InvalidEvent, parse_event
from ringez_worker.handlers.router import Handler, Router
from ringez_worker.keys import Keys
from ringez_worker.logs import Redactor, get_logger
from ringez_worker.settings import Settings
from ringez_worker.worker import activity
from ringez_worker.worker.deferral import Deferrals
from ringez_worker.worker.metrics import WorkerMetrics
from ringez_worker.worker.queue import REPLAY_PENDING

log = get_logger("ringez.dispatch")


@dataclass(slots=True)
class Outcome:
    """What one run of a delivery's handlers did."""

    delivery_id: str
    event: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "ran": self.ran,
            "skipped": self.skipped,
            "failed": self.failed,
        }


# A Retry-After of 0 or a fraction must not spin a job through thousands of deferrals.
MIN_DEFER_SECONDS = 1.0


def rate_limit_wait(exc: BaseException) -> float | None:
    """How long the API asked us to wait, when `exc` is its rate limit saying so."""
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return max(MIN_DEFER_SECONDS, exc.retry_after)
    return None


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter for retry number `attempt` (1-based)."""
    return random.uniform(0, min(cap, base * (2 ** (attempt - 1)))) if base > 0 else 0.0


class Dispatcher:
    """Dispatches deliveries to a Router's handlers, remembering which ones succeeded."""

    def __init__(
        self,
        router: Router,
        settings: Settings,
        redis: Redis,
        *,
        ringez: Any = None,
        keys: Keys | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.router = router
        self.settings = settings
        self.redis = redis
        self.ringez = ringez
        self.keys = keys or Keys(prefix=settings.key_prefix, queue=settings.queue_name)
        self.metrics = metrics or WorkerMetrics()
        self.deferrals = Deferrals(
            redis,
            self.keys,
            max_seconds=settings.rate_limit_max_defer_seconds,
            ttl_seconds=settings.handler_state_ttl_seconds,
        )
        # Error text lands in Redis (failed-events record): no secret may ride along.
        self._redactor = Redactor(settings.secret_values())

    async def dispatch(
        self,
        delivery_id: str,
        body: str,
        *,
        job_try: int = 1,
        only: list[str] | None = None,
        received_ms: int | None = None,
        job_id: str | None = None,
    ) -> Outcome:
        """Run the handlers still owed for this delivery; raise arq `Retry` while tries remain.

        `job_try` is arq's count of this job's runs (`job_id`, the delivery id by default);
        rate-limit deferrals are taken off it (worker/deferral.py)."""
        payload = orjson.loads(body)
        event_name = payload.get("event", "")
        outcome = Outcome(delivery_id=delivery_id, event=event_name)
        bound = log.bind(
            delivery_id=delivery_id,
            event_type=event_name,
            call_id=(payload.get("data") or {}).get("call_id"),
            session_id=(payload.get("data") or {}).get("session_id"),
        )
        if received_ms is not None:
            bound.debug("dispatch.start", queued_ms=int(time.time() * 1000) - received_ms)

        try:
            event = parse_event(payload, delivery_id)
        except InvalidEvent as exc:
            bound.error("event.invalid", error=str(exc))
            outcome.failed["<parse>"] = str(exc)
            await self._record_failure(delivery_id, body, {"<parse>": str(exc)}, job_try)
            return outcome

        handlers = self.router.handlers_for(event_name)
        if only is not None and REPLAY_PENDING not in only:
            handlers = [h for h in handlers if h.name in only]
        # A first try cannot have completions yet; later tries (a retry, a crash) and
        # replays may.
        done = set() if job_try == 1 and only is None else await self._done(delivery_id)
        pending = [h for h in handlers if h.name not in done]
        job_id = job_id or delivery_id
        tries = await self.deferrals.tries(job_id, job_try)
        outcome.skipped = [h.name for h in handlers if h.name in done]

        ctx = Context(
            delivery_id=delivery_id,
            redis=self.redis,
            settings=self.settings,
            log=bound,
            client=self.ringez,
            job_try=tries,
        )
        results = await asyncio.gather(*(self._run(h, event, ctx) for h in pending))
        retryable = False
        waits: list[float | None] = []
        for handler, result in zip(pending, results, strict=True):
            if result is None:
                outcome.ran.append(handler.name)
            else:
                outcome.failed[handler.name], can_retry, wait = result
                retryable |= can_retry
                waits.append(wait)

        if not outcome.failed:
            if only is not None or job_try > 1:
                # A retry or a replay that got through clears an earlier failure record.
                await self.redis.hdel(self.keys.failed, delivery_id)
            return outcome
        if waits and None not in waits:
            # Only the API's rate limit stood in the way: no try used up.
            return await self._defer(
                delivery_id, body, (job_id, job_try, tries), outcome, waits, bound
            )
        if retryable and tries < self.settings.job_max_tries:
            delay = backoff_seconds(
                tries,
                self.settings.retry_backoff_seconds,
                self.settings.retry_backoff_max_seconds,
            )
            # A rate-limited handler among other failures: not before the API allows.
            delay = max([delay, *(w for w in waits if w is not None)])
            bound.warning(
                "dispatch.retry",
                failed=sorted(outcome.failed),
                attempt=tries,
                defer_s=round(delay, 3),
            )
            self.metrics.retries.inc()
            await activity.count(self.redis, self.keys, "retried")
            await self._keep_done(delivery_id)
            raise Retry(defer=delay)
        self.metrics.gave_up.inc()
        await self._record_failure(delivery_id, body, outcome.failed, tries)
        bound.error("dispatch.gave_up", failed=sorted(outcome.failed), attempts=tries)
        return outcome

    async def _defer(
        self,
        delivery_id: str,
        body: str,
        job: tuple[str, int, int],
        outcome: Outcome,
        waits: list[float | None],
        bound: Any,
    ) -> Outcome:
        """Defer the job as long as the API asked (raises `Retry`), or, past
        RATE_LIMIT_MAX_DEFER_SECONDS in total, record the delivery as failed.

        `job`: the job id, arq's run count and our try count."""
        job_id, job_try, tries = job
        wait = max(w for w in waits if w is not None)
        if await self.deferrals.defer(job_id, job_try, wait):
            bound.warning(
                "dispatch.deferred", failed=sorted(outcome.failed), attempt=tries, defer_s=wait
            )
            await self._keep_done(delivery_id)
            raise Retry(defer=wait)
        total = await self.deferrals.total(job_id)
        why = (
            f"rate limited: deferred {total:g} s in total, another {wait:g} s would pass "
            f"RATE_LIMIT_MAX_DEFER_SECONDS ({self.settings.rate_limit_max_defer_seconds:g})"
        )
        failed = {name: f"{error} ({why})" for name, error in outcome.failed.items()}
        self.metrics.gave_up.inc()
        await self._record_failure(delivery_id, body, failed, tries)
        bound.error("dispatch.gave_up", failed=sorted(failed), attempts=tries, why=why)
        return outcome

    async def _run(
        self, handler: Handler, event: Any, ctx: Context
    ) -> tuple[str, bool, float | None] | None:
        """Run one handler; None on success, else (error, whether a retry could help, and
        how long the API's rate limit asked us to wait, if that is what stopped it)."""
        log_ = ctx.log.bind(handler=handler.name)
        started = time.perf_counter()
        api_calls = trace.start()  # this task's Ringez API requests, for the delivery log
        try:
            # Our own limit, so a stuck handler is a retried failure like any other; arq's
            # job timeout would end the job with no retry and no record.
            async with asyncio.timeout(self.settings.job_timeout_seconds):
                await handler.func(event, dataclasses.replace(ctx, log=log_))
        except Superseded as exc:
            # Another attempt at this delivery owns the work: no completion record, so
            # that a retry of it still runs this handler if that attempt fails.
            self.metrics.handler_runs.labels(handler.name, "superseded").inc()
            log_.info("handler.superseded", reason=str(exc))
            return None
        except Exception as exc:  # one handler failing must not stop the others
            elapsed = time.perf_counter() - started
            self.metrics.handler_runs.labels(handler.name, "failed").inc()
            self.metrics.handler_seconds.labels(handler.name).observe(elapsed)
            log_.warning(
                "handler.failed",
                error=f"{type(exc).__name__}: {exc}",
                duration_ms=round(elapsed * 1000, 2),
                traceback="".join(traceback.format_exception(exc, limit=-3)),
            )
            # Errors that know they are final (a 4xx from the Ringez API) say so.
            error = self._redactor.scrub(f"{type(exc).__name__}: {exc}")
            await activity.log_failed_run(
                self.redis,
                self.keys,
                error=error,
                **self._run_fields(ctx, handler, elapsed, api_calls),
            )
            return error, bool(getattr(exc, "retryable", True)), rate_limit_wait(exc)
        # Recorded at once, so a crash after this point never runs this handler again.
        done_key = self.keys.done(ctx.delivery_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(done_key, handler.name, int(time.time() * 1000))
            pipe.expire(done_key, self.settings.done_record_ttl_seconds)
            elapsed = time.perf_counter() - started
            activity.add_run(
                pipe, self.keys, outcome="ok", **self._run_fields(ctx, handler, elapsed, api_calls)
            )
            await pipe.execute()
        self.metrics.handler_runs.labels(handler.name, "ok").inc()
        self.metrics.handler_seconds.labels(handler.name).observe(elapsed)
        log_.info("handler.ok", duration_ms=round(elapsed * 1000, 2))
        return None

    def _run_fields(
        self, ctx: Context, handler: Handler, elapsed: float, api_calls: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "delivery_id": ctx.delivery_id,
            "handler": handler.name,
            "job_try": ctx.job_try,
            "duration_ms": elapsed * 1000,
            "max_entries": self.settings.delivery_log_max_entries,
            "api_calls": api_calls,
        }

    async def _done(self, delivery_id: str) -> set[str]:
        names = await self.redis.hkeys(self.keys.done(delivery_id))
        return {n.decode() if isinstance(n, bytes) else n for n in names}

    async def abandon(self, delivery_id: str, body: str, reason: str, attempts: int) -> None:
        """Record a delivery arq gave up on outside our handlers (crash loops, timeouts)."""
        self.metrics.gave_up.inc()
        await self._record_failure(delivery_id, body, {"<worker>": reason}, attempts)
        log.error("dispatch.abandoned", delivery_id=delivery_id, reason=reason, attempts=attempts)

    async def _record_failure(
        self, delivery_id: str, body: str, failed: dict[str, str], attempts: int
    ) -> None:
        await activity.count(self.redis, self.keys, "failed")
        now = int(time.time() * 1000)
        raw = await self.redis.hget(self.keys.failed, delivery_id)
        previous = orjson.loads(raw) if raw else {}
        record = {
            "delivery_id": delivery_id,
            "event": orjson.loads(body).get("event"),
            "handlers": failed,
            "attempts": previous.get("attempts", 0) + attempts,
            "first_failed_ms": previous.get("first_failed_ms", now),
            "last_failed_ms": now,
            "body": body,
        }
        await self.redis.hset(self.keys.failed, delivery_id, orjson.dumps(record))
        await self._keep_done(delivery_id)

    async def _keep_done(self, delivery_id: str) -> None:
        # Retries and replays may come long after the short success TTL. Best effort: a
        # Redis error here must not turn a retry into a dropped job.
        ttl = self.settings.handler_state_ttl_seconds
        try:
            await self.redis.expire(self.keys.done(delivery_id), ttl)
        except (RedisError, OSError) as exc:
            log.warning(
                "dispatch.keep_done_failed", delivery_id=delivery_id, error=type(exc).__name__
            )
