"""Runs one delivery's handlers: each at most once to success; failures retried, then recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from arq import Retry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ringez_worker.api import trace
from ringez_worker.api.errors import RateLimited
from ringez_worker.backoff import backoff_seconds, write_within
from ringez_worker.handlers.context import Context, Superseded
from ringez_worker.handlers.events import InvalidEvent, parse_event
from ringez_worker.handlers.router import Handler, Router
from ringez_worker.jobs import REPLAY_PENDING, TASK, WEBHOOK
from ringez_worker.keys import Keys
from ringez_worker.logs import REDACTOR, get_logger
from ringez_worker.settings import Settings
from ringez_worker.tracing import TRACING
from ringez_worker.transcripts import redact_body
from ringez_worker.worker import activity
from ringez_worker.worker import failed as failed_record
from ringez_worker.worker.completions import COMPLETIONS, Run
from ringez_worker.worker.deferral import Deferrals
from ringez_worker.worker.metrics import WorkerMetrics

log = get_logger("ringez.dispatch")

# The trace context a failed-events record keeps, so that a replay links to the original
# delivery's trace (set per job run; each run is a task of its own).
_ORIGIN: ContextVar[dict[str, str] | None] = ContextVar("ringez_trace_origin", default=None)


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


def outside_wait(exc: BaseException, backoff: float) -> float | None:
    """How long to defer when `exc` is something outside the handler standing in the way,
    not the handler failing: the API's rate limit (its Retry-After), or Redis refusing a
    command (a full Redis, a failover, a lost connection; `backoff`). Such a deferral is
    not one of JOB_MAX_TRIES: the chaos run's 2 s completion-write fault burned all five
    tries of a 0.2 s backoff in under two seconds and sent live deliveries to the record.
    """
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return max(MIN_DEFER_SECONDS, exc.retry_after)
    if isinstance(exc, RedisError):
        return max(MIN_DEFER_SECONDS, backoff)
    return None


NOT_REGISTERED = "no such handler in this worker (renamed or removed?): not run"


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
        # Error text lands in Redis (failed-events record): no secret may ride along, of
        # any settings object (the payment token is the agents').
        self._redactor = REDACTOR

    async def dispatch(
        self,
        delivery_id: str,
        body: str,
        *,
        job_try: int = 1,
        only: list[str] | None = None,
        received_ms: int | None = None,
        job_id: str | None = None,
        kind: str = WEBHOOK,
        trace: dict[str, Any] | None = None,
    ) -> Outcome:
        """Run the handlers still owed for this job; raise arq `Retry` while tries remain.

        `trace`: the envelope's trace fields (ringez_worker/jobs.py), if it has them; with
        tracing on, the run is a CONSUMER span under the delivery's producer span.

        `kind` is the job envelope's (ringez_worker/jobs.py): a webhook delivery runs the
        handlers of its event, a task those registered with `router.on_task`.

        `job_try` is arq's count of this job's runs (`job_id`, the delivery id by default);
        rate-limit deferrals are taken off it (worker/deferral.py).

        A Redis error anywhere on this path (the completion-record read, the failed-events
        record, its deletion) becomes a `Retry` too: arq deletes a job that raises a plain
        exception, and with it every sibling failure that was still owed a retry.
        """
        args = (delivery_id, body, job_try, only, received_ms, job_id, kind)
        if TRACING.on:
            return await self._dispatch_traced(args, trace)
        # A traced receiver's job on a worker without tracing still keeps its origin.
        _ORIGIN.set(None if trace is None else (trace.get("tl") or trace.get("tc")))
        return await self._dispatch_safely(*args)

    async def _dispatch_traced(
        self, args: tuple[Any, ...], trace: dict[str, Any] | None
    ) -> Outcome:
        from ringez_worker import tracing_otel

        delivery_id, _, job_try, only, _, _, kind = args
        queue = self.settings.queue_name
        replay = only is not None
        with tracing_otel.consumer_span(queue, delivery_id, kind, job_try, trace, replay):
            _ORIGIN.set(tracing_otel.origin(trace))
            try:
                outcome = await self._dispatch_safely(*args)
            except Retry:
                raise  # the reason is on the span already
            except BaseException as exc:
                tracing_otel.fail(type(exc).__name__)
                raise
            if outcome.failed:
                tracing_otel.fail("invalid_event" if "<parse>" in outcome.failed else "gave_up")
            return outcome

    async def _dispatch_safely(
        self,
        delivery_id: str,
        body: str,
        job_try: int,
        only: list[str] | None,
        received_ms: int | None,
        job_id: str | None,
        kind: str,
    ) -> Outcome:
        try:
            return await self._dispatch(
                delivery_id, body, job_try, only, received_ms, job_id or delivery_id, kind
            )
        except (RedisError, OSError) as exc:
            delay = self.backoff(job_try)
            _note(outcome="retry", retry_reason=f"redis: {type(exc).__name__}")
            log.warning(
                "dispatch.redis_error",
                delivery_id=delivery_id,
                error=type(exc).__name__,
                attempt=job_try,
                defer_s=round(delay, 3),
            )
            self.metrics.retries.inc()
            # Past the last try too: the next try writes the failed-events record, and
            # arq's own limit (two tries above ours) ends in `abandon`, which only lets
            # the job go once that record is written.
            raise Retry(defer=delay) from exc

    def backoff(self, job_try: int) -> float:
        """This project's retry delay after try number `job_try`."""
        return backoff_seconds(
            job_try, self.settings.retry_backoff_seconds, self.settings.retry_backoff_max_seconds
        )

    async def _dispatch(
        self,
        delivery_id: str,
        body: str,
        job_try: int,
        only: list[str] | None,
        received_ms: int | None,
        job_id: str,
        kind: str,
    ) -> Outcome:
        payload = _payload(body)
        event_name = payload.get("event", "")
        if not isinstance(event_name, str):
            event_name = ""
        outcome = Outcome(delivery_id=delivery_id, event=event_name)
        data = payload.get("data")
        data = data if isinstance(data, dict) else {}
        bound = log.bind(
            delivery_id=delivery_id,
            event_type=event_name,
            call_id=data.get("call_id"),
            session_id=data.get("session_id"),
        )
        if received_ms is not None:
            bound.debug("dispatch.start", queued_ms=int(time.time() * 1000) - received_ms)
        if TRACING.on:
            from ringez_worker import tracing_otel

            attributes = tracing_otel.delivery_attributes(delivery_id, event_name, data)
            tracing_otel.trace.get_current_span().set_attributes(attributes)

        try:
            event = parse_event(payload, delivery_id)
        except InvalidEvent as exc:
            bound.error("event.invalid", error=str(exc))
            _note(outcome="invalid_event")
            outcome.failed["<parse>"] = str(exc)
            await self._record_failure(delivery_id, body, {"<parse>": str(exc)}, job_try, kind)
            return outcome

        handlers = self.router.handlers_for(event_name, task=kind == TASK)
        if only is not None and REPLAY_PENDING not in only:
            handlers = [h for h in handlers if h.name in only]
            # A replay naming a handler this worker does not have (renamed or removed
            # since): it fails and stays in the record. Before, nothing ran, the replay
            # counted as a success and the record was cleared.
            known = {h.name for h in handlers}
            for name in only:
                if name not in known:
                    outcome.failed[name] = NOT_REGISTERED
        # A first try cannot have completions yet; later tries (a retry, a crash) and
        # replays may.
        done = set() if job_try == 1 and only is None else await self._done(delivery_id)
        pending = [h for h in handlers if h.name not in done]
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
        sink = COMPLETIONS.get()
        if sink is not None:
            sink.running = len(pending)
        if len(pending) == 1:  # most deliveries: no gather, no task of its own
            results = [await self._run(pending[0], event, ctx)]
        else:
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
                await failed_record.forget(self.redis, self.keys, delivery_id)
            _note(outcome="ok")
            return outcome
        if waits and None not in waits:
            # Only the API's rate limit or Redis stood in the way: no try used up.
            return await self._defer(
                delivery_id, body, (job_id, job_try, tries, kind), outcome, waits, bound
            )
        if retryable and tries < self.settings.job_max_tries:
            # A rate-limited handler among other failures: not before the API allows.
            delay = max([self.backoff(tries), *(w for w in waits if w is not None)])
            bound.warning(
                "dispatch.retry",
                failed=sorted(outcome.failed),
                attempt=tries,
                defer_s=round(delay, 3),
            )
            self.metrics.retries.inc()
            _note(outcome="retry", retry_reason="handler_failed", attempt=tries)
            await activity.count(self.redis, self.keys, "retried")
            await self._keep_done(delivery_id)
            raise Retry(defer=delay)
        self.metrics.gave_up.inc()
        _note(outcome="gave_up", attempt=tries)
        await self._record_failure(delivery_id, body, outcome.failed, tries, kind)
        bound.error("dispatch.gave_up", failed=sorted(outcome.failed), attempts=tries)
        return outcome

    async def _defer(
        self,
        delivery_id: str,
        body: str,
        job: tuple[str, int, int, str],
        outcome: Outcome,
        waits: list[float | None],
        bound: Any,
    ) -> Outcome:
        """Defer the job as long as the API or Redis asked (raises `Retry`), or, past
        RATE_LIMIT_MAX_DEFER_SECONDS in total, record the delivery as failed.

        `job`: the job id, arq's run count, our try count and the job's kind."""
        job_id, job_try, tries, kind = job
        wait = max(w for w in waits if w is not None)
        if await self.deferrals.defer(job_id, job_try, wait):
            bound.warning(
                "dispatch.deferred", failed=sorted(outcome.failed), attempt=tries, defer_s=wait
            )
            _note(outcome="deferred", retry_reason="rate_limited_or_redis", attempt=tries)
            await self._keep_done(delivery_id)
            raise Retry(defer=wait)
        total = await self.deferrals.total(job_id)
        why = (
            f"rate limited or Redis refusing: deferred {total:g} s in total, another {wait:g} s "
            "would pass "
            f"RATE_LIMIT_MAX_DEFER_SECONDS ({self.settings.rate_limit_max_defer_seconds:g})"
        )
        failed = {name: f"{error} ({why})" for name, error in outcome.failed.items()}
        self.metrics.gave_up.inc()
        _note(outcome="gave_up", attempt=tries)
        await self._record_failure(delivery_id, body, failed, tries, kind)
        bound.error("dispatch.gave_up", failed=sorted(failed), attempts=tries, why=why)
        return outcome

    async def _run(
        self, handler: Handler, event: Any, ctx: Context
    ) -> tuple[str, bool, float | None] | None:
        if not TRACING.on:
            return await self._run_handler(handler, event, ctx)
        from ringez_worker import tracing_otel

        # One INTERNAL span per handler run; its API requests and Redis calls are children.
        with tracing_otel.handler_span(handler.name, ctx.job_try):
            result = await self._run_handler(handler, event, ctx)
            if result is not None:
                tracing_otel.fail("handler_failed")
            return result

    async def _run_handler(
        self, handler: Handler, event: Any, ctx: Context
    ) -> tuple[str, bool, float | None] | None:
        """Run one handler; None on success, else (error, whether a retry could help, and
        how long the API's rate limit asked us to wait, if that is what stopped it)."""
        log_ = ctx.log.bind(handler=handler.name)
        started = time.perf_counter()
        api_calls = trace.start()  # this task's Ringez API requests, for the delivery log
        sink = COMPLETIONS.get()
        try:
            # Our own limit, so a stuck handler is a retried failure like any other; arq's
            # job timeout would end the job with no retry and no record.
            async with asyncio.timeout(self.settings.job_timeout_seconds):
                await handler.func(event, dataclasses.replace(ctx, log=log_))
        except Superseded as exc:
            if sink is not None:
                sink.running -= 1
            # Another attempt at this delivery owns the work: no completion record, and the
            # job is deferred (not a try), not ended. Ending it lost a delivery in the
            # chaos run: the owner was a second run of this same job (its lease had
            # lapsed); it failed its transfer and asked for a retry, but this run had
            # already removed the job, so the retry found no job and no record was kept.
            self.metrics.handler_runs.labels(handler.name, "superseded").inc()
            _note(outcome="superseded")
            log_.info("handler.superseded", reason=str(exc))
            return f"Superseded: {exc}", True, max(MIN_DEFER_SECONDS, self.backoff(ctx.job_try))
        except Exception as exc:  # one handler failing must not stop the others
            if sink is not None:
                sink.running -= 1
            elapsed = time.perf_counter() - started
            self.metrics.handler_runs.labels(handler.name, "failed").inc()
            _note(outcome="failed", error_type=type(exc).__name__)
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
            wait = outside_wait(exc, self.backoff(ctx.job_try))
            return error, bool(getattr(exc, "retryable", True)), wait
        if sink is not None:
            sink.running -= 1
            if sink.running == 0:
                # The last of the delivery's handlers: its record is written by the worker
                # in the call that ends the job (worker/completions.py).
                elapsed = time.perf_counter() - started
                sink.runs.append(
                    Run(
                        self.keys.done(ctx.delivery_id),
                        ctx.delivery_id,
                        handler.name,
                        int(time.time() * 1000),
                        ctx.job_try,
                        elapsed * 1000,
                        orjson.dumps(api_calls) if api_calls else b"",
                    )
                )
                self.metrics.handler_runs.labels(handler.name, "ok").inc()
                _note(outcome="ok")
                self.metrics.handler_seconds.labels(handler.name).observe(elapsed)
                log_.info("handler.ok", duration_ms=round(elapsed * 1000, 2))
                return None
        try:
            elapsed = time.perf_counter() - started
            run = self._run_fields(ctx, handler, elapsed, api_calls)
            await self._mark_done(
                ctx.delivery_id,
                handler.name,
                log=lambda pipe: activity.add_run(pipe, self.keys, outcome="ok", **run),
            )
        except (RedisError, OSError) as exc:
            # Not recorded, so a retry runs it again (at least once, as documented); a
            # failure of its own keeps the siblings' failures in this outcome.
            self.metrics.handler_runs.labels(handler.name, "unrecorded").inc()
            _note(outcome="unrecorded")
            log_.warning("handler.completion_unrecorded", error=type(exc).__name__)
            wait = max(MIN_DEFER_SECONDS, self.backoff(ctx.job_try))
            return f"completion record not written: {type(exc).__name__}", True, wait
        elapsed = time.perf_counter() - started
        self.metrics.handler_runs.labels(handler.name, "ok").inc()
        _note(outcome="ok")
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

    async def _mark_done(
        self, delivery_id: str, handler: str, log: Callable[[Any], None] | None = None
    ) -> None:
        """Record the handler's success at once, so a crash after it never runs it again.

        The side effect has happened: a short refusal (a failover, a full Redis being
        freed) is waited out, up to half a lease, rather than running the handler again.
        """
        done_key = self.keys.done(delivery_id)

        async def write() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(done_key, handler, int(time.time() * 1000))  # type: ignore[arg-type]  # redis-py: value: str
                pipe.expire(done_key, self.settings.done_record_ttl_seconds)
                if log is not None:
                    log(pipe)  # the console's run entry, in the same round trip
                await pipe.execute()

        await write_within(self.settings.job_lease_seconds / 2, write)

    async def _done(self, delivery_id: str) -> set[str]:
        names = await self.redis.hkeys(self.keys.done(delivery_id))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        return {n.decode() if isinstance(n, bytes) else n for n in names}

    async def abandon(
        self,
        delivery_id: str,
        body: str,
        reason: str,
        attempts: int,
        kind: str = WEBHOOK,
        origin: dict[str, str] | None = None,
    ) -> None:
        """Record a delivery arq gave up on outside our handlers (crash loops, timeouts).

        `origin`: the job's trace context, for a replay to link to."""
        self.metrics.gave_up.inc()
        _ORIGIN.set(origin)
        await self._record_failure(delivery_id, body, {"<worker>": reason}, attempts, kind)
        log.error("dispatch.abandoned", delivery_id=delivery_id, reason=reason, attempts=attempts)

    async def _record_failure(
        self,
        delivery_id: str,
        body: str,
        failed: dict[str, str],
        attempts: int,
        kind: str = WEBHOOK,
    ) -> None:
        await activity.count(self.redis, self.keys, "failed")
        if self.settings.privacy_redact_transcripts:
            # Kept for replay, but not with what the caller said: a replay runs without it.
            body = redact_body(body)
        now = int(time.time() * 1000)
        previous = _previous(await self.redis.hget(self.keys.failed, delivery_id))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        record = {
            "delivery_id": delivery_id,
            "event": _payload(body).get("event"),
            "handlers": failed,
            "attempts": previous.get("attempts", 0) + attempts,
            "first_failed_ms": previous.get("first_failed_ms", now),
            "last_failed_ms": now,
            "body": body,
        }
        if kind != WEBHOOK:
            record["kind"] = kind  # replay queues it again as the same kind of job
        origin = _ORIGIN.get()
        if origin:
            record["trace"] = origin  # a replay's spans link to this trace
        await failed_record.store(
            self.redis,
            self.keys,
            delivery_id,
            orjson.dumps(record),
            retention_seconds=self.settings.failed_retention_seconds,
            max_records=self.settings.failed_max_records,
        )
        await self._keep_done(delivery_id)

    async def _keep_done(self, delivery_id: str) -> None:
        # Retries and replays may come long after the short success TTL. Best effort: a
        # Redis error here must not turn a retry into a dropped job.
        ttl = self.settings.handler_state_ttl_seconds
        sink = COMPLETIONS.get()
        if sink is not None:
            sink.keep = True  # records still to be written with the job's end
        try:
            await self.redis.expire(self.keys.done(delivery_id), ttl)
        except (RedisError, OSError) as exc:
            log.warning(
                "dispatch.keep_done_failed", delivery_id=delivery_id, error=type(exc).__name__
            )


def _note(**attributes: Any) -> None:
    """`ringez.*` attributes on the current span (the process or the handler span)."""
    if TRACING.on:
        from ringez_worker import tracing_otel

        tracing_otel.set_attributes(**attributes)


def _payload(body: str) -> dict[str, Any]:
    """The body as a JSON object; {} when it is not one (then parse_event records why)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _previous(raw: bytes | None) -> dict[str, Any]:
    # A corrupted earlier record must not stop a new one being written over it.
    try:
        previous = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(previous, dict):
        return {}
    attempts, first = previous.get("attempts"), previous.get("first_failed_ms")
    return {
        "attempts": attempts if isinstance(attempts, int) else 0,
        **({"first_failed_ms": first} if isinstance(first, int) else {}),
    }
