"""The callback queue manager (the guide's Pattern 3), driven by webhooks and one task.

- `callbacks.assign`, a task of the one job envelope, is the only place requests move
  forward: it takes new requests in (the customer-info hook runs here, in the worker,
  never on the web process's request path), puts due retries back, re-dials assignments
  a killed worker left, then assigns and dials until no agent can take another. It is
  queued by a new request, by every call that ends and by a roster change, and again
  `CALLBACK_SWEEP_SECONDS` later while anything waits. Concurrent passes are safe: every
  step is one Lua script (agents/callbacks/store.py).
- A dial is claimed in Redis per assignment before the request and carries the
  idempotency key `callback:<id>:<n>`: a retry after a crash sends the same key.
- `call.answered` on one of these calls transfers it to the agent's number (the guide
  only sets the agent's number as caller id, which would never ring the agent);
  `call.completed` / `call.failed` frees the agent's slot once and ends the request or
  schedules its retry (same priority, original age) after CALLBACK_RETRY_AFTER_SECONDS.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from typing import Any

from ringez_worker.agents.callbacks.metrics import CallbackMetrics
from ringez_worker.agents.callbacks.models import (
    CallbackRequest,
    customer_info_from_metadata,
    priority,
)
from ringez_worker.agents.callbacks.roster import RosterFile, load_roster
from ringez_worker.agents.callbacks.store import CallbackKeys, CallbackStore
from ringez_worker.agents.config import AgentSettings
from ringez_worker.agents.own_calls import leave_own_calls_alone
from ringez_worker.api.priority import Priority
from ringez_worker.handlers import Context, Router
from ringez_worker.jobs import schedule_task
from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger
from ringez_worker.timestamps import parse_timestamp

ASSIGN = "callbacks.assign"
FIELDS = ["created_ms", "skill", "language"]  # what a pass's observation reads of a request
CALL_MAP_TTL_SECONDS = 24 * 3600
log = get_logger("ringez.callbacks")
# `calls/initiate` dedupes an idempotency key for 5 minutes (the contract). A dial claimed
# longer ago than this may have gone out and been forgotten by the API: a resend with
# the same key could place a second call, so the session's call history is read first.
DEDUPE_TRUST_MS = 4 * 60 * 1000
HISTORY_PAGES = 20  # of 100 calls, newest first, looked through for a left dial
FINAL_STATUSES = frozenset({"completed", "failed", "busy", "no-answer"})

CustomerInfo = Callable[[CallbackRequest], Any]


class NotMappedYet(Exception):
    """call.answered for a call whose dial has not been written down yet: try again."""

    retryable = True


def _ms() -> int:
    return int(time.time() * 1000)


def load_hook(path: str | None) -> CustomerInfo:
    """`module:function` (CALLBACK_CUSTOMER_INFO), or the metadata default."""
    if not path:
        return customer_info_from_metadata
    module, _, name = path.partition(":")
    func = getattr(importlib.import_module(module), name or "customer_info")
    if not callable(func):
        raise TypeError(f"CALLBACK_CUSTOMER_INFO {path} is not callable")
    return func


async def schedule_pass(redis: Any, keys: Keys) -> bool:
    """Queue an assignment pass now. Two task keys take turns: a pass already queued
    will see the new work, and while one runs (a running task cannot requeue its own
    key) the other can still be queued behind it."""
    for key in ("pass", "pass:b"):
        if await schedule_task(redis, keys, ASSIGN, {}, key=key):
            return True
    return False


async def schedule_sweep(redis: Any, keys: Keys, delay_seconds: float) -> bool:
    """One pending sweep pass `delay_seconds` from now, however many passes ask: the
    mark is set with the queueing, in one script, and cleared when the sweep starts."""
    mark = CallbackStore(redis, keys.prefix).keys.sweep
    return await schedule_task(
        redis,
        keys,
        ASSIGN,
        {"sweep": True},
        key=f"sweep:{time.time_ns():x}",
        delay_seconds=delay_seconds,
        once_key=mark,
        once_ttl_ms=int(delay_seconds * 1000) + 60_000,
    )


class CallbackAgent:
    name = "callbacks"

    def __init__(
        self,
        config: AgentSettings,
        metrics: CallbackMetrics | None = None,
        customer_info: CustomerInfo | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.customer_info = customer_info or load_hook(config.callback_customer_info)
        self.roster = RosterFile(config.callback_roster)

    def register(self, router: Router) -> None:
        router.on_task(ASSIGN, name="agents.callbacks.assign")(self.on_pass)
        router.on_startup(self.on_startup)
        router.add("call.answered", self.on_answered, name="agents.callbacks.answered")
        router.add("call.completed", self.on_ended, name="agents.callbacks.ended")
        router.add("call.failed", self.on_ended, name="agents.callbacks.ended")

    def _store(self, ctx: Context) -> CallbackStore:
        return CallbackStore(ctx.redis, ctx.settings.key_prefix)

    def _keys(self, ctx: Context) -> Keys:
        return Keys(prefix=ctx.settings.key_prefix, queue=ctx.settings.queue_name)

    async def on_startup(self, redis: Any, settings: Any) -> None:
        """Load CALLBACK_ROSTER into Redis and queue a pass: a worker that starts with
        requests waiting (or a changed roster) does not wait for the next trigger."""
        keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
        if await self.roster.refresh(redis, CallbackStore(redis, settings.key_prefix).keys):
            log.info("callbacks.roster_loaded", path=str(self.roster.path))
        await schedule_pass(redis, keys)

    # The pass.

    async def on_pass(self, event: Any, ctx: Context) -> None:
        store = self._store(ctx)
        k = store.keys
        data = event.data if isinstance(event.data, dict) else event.data.model_dump()
        if data.get("sweep"):
            await ctx.redis.delete(k.sweep)  # the next pass to end with work waiting asks
        if await self.roster.refresh(ctx.redis, k):
            ctx.log.info("callbacks.roster_loaded", path=str(self.roster.path))
        now = _ms()
        for raw_id, created in await ctx.redis.zrange(k.new, 0, 99, withscores=True):
            await self._take_in(ctx, store, raw_id.decode(), int(created))
        await store.move_due(now)
        # An assignment this old with no call yet: its worker died between the claim and
        # the dial's answer; dial it again (same idempotency key, so the API dedupes a
        # dial that did go out).
        stale_ms = int(self.config.callback_dial_stale_seconds * 1000)
        stale = await ctx.redis.zrangebyscore(k.assigned, "-inf", now - stale_ms)
        for raw_id in stale:
            record = await store.get(raw_id.decode())
            if record and record.get("n"):
                await self._dial(ctx, store, raw_id.decode(), int(record["n"]))
        while (got := await store.assign(_ms())) is not None:
            request_id, agent, n = got
            if self.metrics is not None:
                self.metrics.assignments.inc()
            ctx.log.info("callbacks.assigned", request_id=request_id, agent=agent, attempt=n)
            await self._dial(ctx, store, request_id, n)
        waiting = await self._observe(ctx, store)
        if waiting:
            await schedule_sweep(ctx.redis, self._keys(ctx), self.config.callback_sweep_seconds)

    async def _take_in(self, ctx: Context, store: CallbackStore, rid: str, created: int) -> None:
        record = await store.get(rid)
        if record is None or record.get("state") != "new":
            await ctx.redis.zrem(store.keys.new, rid)
            return
        request = CallbackRequest.model_validate_json(record["body"])
        info = self.customer_info(request)
        if inspect.isawaitable(info):
            info = await info
        info = info if isinstance(info, dict) else {}
        pending = info.get("pending_issues") or 0
        score = priority(request, info.get("tier"), int(pending) if pending else 0)
        await store.queue(rid, score, created, _ms())
        ctx.log.info("callbacks.queued", request_id=rid, priority=score)

    async def _dial(self, ctx: Context, store: CallbackStore, rid: str, n: int) -> None:
        claim = await store.claim_dial(rid, n, _ms())
        if claim == 0:
            return  # this assignment moved on (dialed, ended) elsewhere
        record = await store.get(rid) or {}
        request = CallbackRequest.model_validate_json(record["body"])
        session_id = self.config.callback_session_id
        if not session_id:
            await self._end_dial(ctx, store, rid, "CALLBACK_SESSION_ID is not set")
            return
        dial = ctx.ringez.with_priority(Priority.DIAL).calls
        since_ms = int(record.get("dial_ms") or 0)
        if claim == 2 and _ms() - since_ms > DEDUPE_TRUST_MS:
            # A dial left this long ago: the API no longer knows its key. If it went out,
            # the call is in the session's history: take that one instead of a second.
            found = await self._left_call(ctx, session_id, request.phone, since_ms)
            if found is not None:
                await self._adopt(ctx, store, rid, n, found)
                return
        try:
            call = await dial.initiate(
                session_id=session_id,
                to_number=request.phone,
                from_number=record.get("agent_number"),
                idempotency_key=f"callback:{rid}:{n}",
            )
        except Exception as exc:
            if getattr(exc, "retryable", True):
                raise  # the pass is retried; its dial resends the same key
            await self._end_dial(ctx, store, rid, f"dial refused: {type(exc).__name__}")
            return
        if self.metrics is not None:
            self.metrics.dials.inc()
        if claim == 2:
            # A resend of a dial a killed worker left: the API's dedupe answers with the call
            # the first send placed, which may be answered already (its call.answered found
            # no request to move and gave up after two tries) or over. The CI chaos run left
            # one so, answered and never transferred, its agent's slot taken for good.
            current = await ctx.ringez.with_priority(Priority.LIVE).calls.get(call.call_id)
            await self._adopt(
                ctx, store, rid, n, {"call_id": call.call_id, "status": current.status}
            )
            return
        await store.dialed(rid, n, call.call_id, _ms(), CALL_MAP_TTL_SECONDS)
        ctx.log.info("callbacks.dialed", request_id=rid, call_id=call.call_id, attempt=n)

    async def _left_call(
        self, ctx: Context, session_id: str, phone: str, since_ms: int
    ) -> dict[str, Any] | None:
        """The session's call to `phone` created since `since_ms` (less a minute of clock
        skew), newest first; None when there is none."""
        calls = ctx.ringez.with_priority(Priority.DIAL).calls
        floor = since_ms - 60_000
        for page in range(HISTORY_PAGES):
            got = await calls.history(session_id, limit=100, offset=page * 100)
            for call in got.calls:
                try:
                    created = int(parse_timestamp(call.get("created_at")).timestamp() * 1000)
                except ValueError:
                    continue
                if created < floor:
                    return None  # newest first: the rest are older still
                if call.get("to_number") == phone:
                    return call
            if not got.pagination or not got.pagination.has_more:
                return None
        return None

    async def _adopt(
        self, ctx: Context, store: CallbackStore, rid: str, n: int, call: dict[str, Any]
    ) -> None:
        """Write down a left dial's call as this assignment's; if it already ended (its
        webhooks found no request to move), end the assignment as its webhook would have."""
        call_id = str(call.get("call_id"))
        await store.dialed(rid, n, call_id, _ms(), CALL_MAP_TTL_SECONDS)
        ctx.log.warning("callbacks.dial_adopted", request_id=rid, call_id=call_id, attempt=n)
        status = call.get("status")
        if status in FINAL_STATUSES:
            await self._finish(ctx, store, rid, call_id, "failed", f"left dial {status}")
        elif status == "in-progress":
            await self._connect(ctx, store, rid, call_id)  # its call.answered went unheard

    async def _end_dial(self, ctx: Context, store: CallbackStore, rid: str, why: str) -> None:
        state = await self._finish(ctx, store, rid, "", "failed", why)
        ctx.log.warning("callbacks.dial_failed", request_id=rid, reason=why, state=state)

    async def _finish(
        self, ctx: Context, store: CallbackStore, rid: str, call_id: str, outcome: str, why: str
    ) -> str:
        cfg = self.config
        now = _ms()
        due = now + int(cfg.callback_retry_after_seconds * 1000)
        state = await store.finish(
            rid,
            call_id,
            outcome,
            why,
            now,
            due,
            cfg.callback_max_tries,
            cfg.callback_record_ttl_seconds,
        )
        if state:
            if self.metrics is not None:
                self.metrics.finished.labels(state=state).inc()
            await schedule_pass(ctx.redis, self._keys(ctx))
        return state

    async def _observe(self, ctx: Context, store: CallbackStore) -> bool:
        """Metrics, and unservable requests said once; True while anything waits or an
        assignment has no call yet (a dial a killed worker left is only picked up again
        by a later pass: without one, the last request of a burst stayed `dialing`), and
        always while CALLBACK_ROSTER names a file (a pass is what notices it changed)."""
        k = store.keys
        now = _ms()
        async with ctx.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(k.queue)
            pipe.zcard(k.new)
            pipe.zcard(k.retry)
            pipe.zcard(k.assigned)
            pipe.zrange(k.queue, 0, 199)
            queued, new, retry, assigned, ids = await pipe.execute()
        agents = await load_roster(ctx.redis, k)
        oldest = 0.0
        for raw_id in ids:
            # Only the fields looked at here, not the request's body.
            fields = await ctx.redis.hmget(k.request(raw_id.decode()), FIELDS)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            record = {n: v.decode() for n, v in zip(FIELDS, fields, strict=True) if v is not None}
            waited = (now - int(record.get("created_ms", now))) / 1000
            oldest = max(oldest, waited)
            servable = any(
                a.get("available")
                and record.get("skill") in a.get("skills", [])
                and record.get("language") in a.get("languages", [])
                for a in agents
            )
            if not servable and waited >= self.config.callback_unservable_seconds:
                if await ctx.redis.hsetnx(k.request(raw_id.decode()), "unservable", str(now)):  # type: ignore[misc]  # redis-py: Awaitable[T] | T
                    ctx.log.warning(
                        "callbacks.unservable",
                        request_id=raw_id.decode(),
                        skill=record.get("skill"),
                        language=record.get("language"),
                        waited_s=round(waited, 1),
                    )
                    if self.metrics is not None:
                        self.metrics.unservable.inc()
        if self.metrics is not None:
            self.metrics.queue_length.set(queued)
            self.metrics.oldest_wait.set(oldest)
            for agent in agents:
                self.metrics.agent_load.labels(agent=agent["id"]).set(agent["load"])
        return bool(queued or new or retry or assigned or self.roster.path is not None)

    # The calls.

    async def on_answered(self, event: Any, ctx: Context) -> None:
        store = self._store(ctx)
        call_id = event.call_id
        rid = await store.request_of_call(call_id)
        if rid is None:
            # Answered before the dial's answer was written down (a fast answer): a
            # dial in flight makes it worth one more look, a moment later.
            if ctx.job_try <= 2 and await ctx.redis.zcard(store.keys.assigned):
                raise NotMappedYet(f"no callback request for {call_id} yet")
            return
        await self._connect(ctx, store, rid, call_id)

    async def _connect(self, ctx: Context, store: CallbackStore, rid: str, call_id: str) -> None:
        """Transfer the answered call to its agent, once (a redelivery finds it moved on)."""
        took = await store.step(rid, call_id, "calling", "transferring", _ms())
        record = await store.get(rid) or {}
        if not took and record.get("state") != "transferring":
            return  # already transferred (a redelivery), or the call is over
        # (Not taken but `transferring`: a retry after a crash mid-transfer; transferring
        # to the same agent again is the safe side, or the customer waits on a silent line.)
        agent_number = record.get("agent_number")
        if not agent_number:
            return
        await ctx.ringez.with_priority(Priority.LIVE).calls.transfer(
            call_id, agent_number, reason="callback"
        )
        await store.step(rid, call_id, "transferring", "live", _ms())
        ctx.log.info("callbacks.connected", request_id=rid, agent=record.get("agent"))

    async def on_ended(self, event: Any, ctx: Context) -> None:
        store = self._store(ctx)
        call_id = event.call_id
        rid = await store.request_of_call(call_id)
        if rid is None:
            return
        record = await store.get(rid) or {}
        talked = event.event == "call.completed" and record.get("state") == "live"
        reason = getattr(event.data, "reason", None) or event.event.removeprefix("call.")
        outcome = "done" if talked else "failed"
        state = await self._finish(ctx, store, rid, call_id, outcome, "" if talked else reason)
        if state:
            ctx.log.info("callbacks.call_ended", request_id=rid, state=state, reason=reason)


def callback_call_key(prefix: str, call_id: str) -> str:
    """The callback queue's call map (for the own-calls guard, agents/own_calls.py)."""
    return CallbackKeys(prefix).call(call_id)


def leave_callback_calls_alone(router: Router) -> Router:
    """`router`'s handlers, skipping the service's own callback calls (the one guard,
    agents/own_calls.py, with the callback call map only)."""
    return leave_own_calls_alone(router, [callback_call_key])
