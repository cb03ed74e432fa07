"""The one job envelope, for every kind of job the workers run.

A job is (kind, id, body): a Ringez webhook delivery (`webhook`, the body as Ringez
signed it) or a task the service gives itself (`task`: a scheduled check, a retry, a
report; the body an event-shaped JSON object named `task:<name>`). Both run through the
same dispatcher, so a new kind of work is a handler (`router.on_task(name)`) with the
same retries, leases, completion records and failed-events record as a webhook's.

On Redis a job is an arq job record (`arq:job:<id>` + its score in the queue's sorted
set), JSON, never pickle. The arguments keep the 0.1 layout, `[id, body, received_ms,
only]`, so jobs queued by an older receiver still run; the kind rides in arq's keyword
arguments and only when it is not `webhook`, so a webhook job is byte-for-byte what an
older worker reads too.

Tracing (ringez_worker/tracing.py) adds the producer's W3C trace context beside arq's
fields (`tc`; a replay's link to the original delivery: `tl`), where arq and an older
worker never look: jobs with and without it run on workers with and without tracing.
This worker's deserializer hands them to the job function as its `trace` argument.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from ringez_worker.keys import Keys
from ringez_worker.lua import Arg, LuaScript
from ringez_worker.tracing import TRACE_CONTEXT, TRACE_LINK, TRACING

JOB_FUNCTION = "handle_event"
WEBHOOK = "webhook"
TASK = "task"
KINDS = (WEBHOOK, TASK)
TASK_PREFIX = "task:"
# `only` for a replay of every handler that has not succeeded yet (a delivery the worker
# gave up on as a whole, or one whose body did not parse).
REPLAY_PENDING = "<pending>"


def dumps_job(obj: object) -> bytes:
    """arq job serializer: JSON, never pickle (a writable Redis must not mean code execution)."""
    return orjson.dumps(obj)


def loads_job(data: bytes) -> Any:
    obj = orjson.loads(data)
    # The trace fields ride outside arq's `a` and `k` (an older worker would refuse an
    # argument it does not know); this worker's job function takes them as `trace`.
    if type(obj) is dict and (TRACE_CONTEXT in obj or TRACE_LINK in obj):
        kwargs = obj.get("k")
        if type(kwargs) is dict:
            kwargs["trace"] = {k: obj.pop(k) for k in (TRACE_CONTEXT, TRACE_LINK) if k in obj}
    return obj


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work: what it is (`kind`), which (`id`), and its JSON `body`."""

    kind: str
    id: str
    body: str
    received_ms: int | None = None
    only: list[str] | None = None  # a replay: just these handlers (or REPLAY_PENDING)
    trace_context: dict[str, str] | None = None  # the producer span's (tracing on)
    trace_link: dict[str, str] | None = None  # a replay's: the original delivery's trace

    def record(self, enqueue_ms: int) -> bytes:
        """The arq job record (arq's own layout: function, args, kwargs, enqueue time)."""
        args: list[object] = [self.id, self.body, self.received_ms]
        if self.only is not None:
            args.append(self.only)
        kwargs = {} if self.kind == WEBHOOK else {"kind": self.kind}
        record: dict[str, object] = {
            "t": 1,
            "f": JOB_FUNCTION,
            "a": args,
            "k": kwargs,
            "et": enqueue_ms,
        }
        if self.trace_context:
            record[TRACE_CONTEXT] = self.trace_context
        if self.trace_link:
            record[TRACE_LINK] = self.trace_link
        return orjson.dumps(record)

    @classmethod
    def from_record(cls, raw: bytes | str) -> Job:
        """The envelope inside an arq job record; ValueError if it is not one of ours."""
        record = orjson.loads(raw)
        args, kwargs = record.get("a") or [], record.get("k") or {}
        if len(args) < 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
            raise ValueError("not a job envelope: arguments are not (id, body, ...)")
        kind = kwargs.get("kind", WEBHOOK)
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        received = args[2] if len(args) > 2 else None
        only = args[3] if len(args) > 3 else None
        return cls(
            kind,
            args[0],
            args[1],
            received,
            only,
            _fields(record.get(TRACE_CONTEXT)),
            _fields(record.get(TRACE_LINK)),
        )


def _fields(value: object) -> dict[str, str] | None:
    """A trace carrier as stored, or None if it is not a dict of strings."""
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return value
    return None


def job_bytes(
    delivery_id: str,
    body: bytes | str,
    received_ms: int,
    only: list[str] | None = None,
    trace_context: dict[str, str] | None = None,
) -> bytes:
    """The arq job record of one webhook delivery (the receiver's hot path)."""
    text = body.decode() if isinstance(body, bytes) else body
    return Job(WEBHOOK, delivery_id, text, received_ms, only, trace_context).record(received_ms)


def task_body(name: str, data: dict[str, Any]) -> str:
    """A task's body: shaped like an event, so handlers get an `Event` as for webhooks."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps({"event": TASK_PREFIX + name, "timestamp": now, "data": data}).decode()


# KEYS: the job key, the queue[, a once key]. ARGV: ttl ms, record, score, job id, wake
# channel, unique[, the once key's ttl ms].
# With `unique`, nothing is written while a job of that id exists (queued or running):
# "at most one pending check per call", whatever redeliveries and workers do. With a once
# key, the job is queued only by whoever sets that key (SET NX), in the same step: a
# crash can never leave the key set and the job unqueued, or the job queued and the key
# unset (which let a redelivery start a second chain of quality checks).
_ENQUEUE_ONE = LuaScript(
    """
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[7]) then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('PUBLISH', ARGV[5], '')
return 1
"""
)


async def enqueue_job(
    redis: Redis,
    keys: Keys,
    job: Job,
    *,
    job_id: str | None = None,
    due_ms: int | None = None,
    ttl_ms: int,
    unique: bool = False,
    once_key: str | None = None,
    once_ttl_ms: int = 0,
) -> bool:
    """Queue `job` (under `job_id`, by default its id) to run at `due_ms` (default now).

    Scheduled work is a job with a later score, never a sleeping worker. Returns False
    when `unique` and a job of that id is already queued or running, or when `once_key`
    is given and already set (it is set, for `once_ttl_ms`, together with the queueing)."""
    if TRACING.on and job.trace_context is None and job.trace_link is None:
        from ringez_worker import tracing_otel

        # Work queued by a handler (a scheduled check): its runs link the span that
        # queued it, in a trace of their own rather than stretching the delivery's.
        job = replace(job, trace_link=tracing_otel.carrier() or None)
    now = int(time.time() * 1000)
    due = now if due_ms is None else due_ms
    jid = job_id or job.id
    keys_ = [keys.job(jid), keys.queue]
    ttl = max(ttl_ms, due - now + ttl_ms)
    args: list[Arg] = [ttl, job.record(now), due, jid, keys.wake, "1" if unique else "0"]
    if once_key is not None:
        keys_.append(once_key)
        args.append(max(1, once_ttl_ms))
    return bool(await _ENQUEUE_ONE(redis, keys_, args))


async def schedule_task(
    redis: Redis,
    keys: Keys,
    name: str,
    data: dict[str, Any],
    *,
    key: str | None = None,
    delay_seconds: float = 0.0,
    ttl_ms: int = 7 * 24 * 3600 * 1000,
    once_key: str | None = None,
    once_ttl_ms: int = 0,
) -> bool:
    """Run the `router.on_task(name)` handlers with `data` after `delay_seconds`.

    With `key`, the task is unique: while a task of that key is queued or running, a
    second one is not queued (returns False). With `once_key`, it is queued only if that
    key was not set, and the key is set in the same atomic step (see `enqueue_job`)."""
    # The arq job id is the key (what makes it unique); the envelope's id, which keys the
    # completion record, is this run's own, so a later task of the same key starts clean.
    instance = f"{TASK_PREFIX}{name}:{time.time_ns():x}"
    job_id = f"{TASK_PREFIX}{name}:{key}" if key else instance
    due = int((time.time() + delay_seconds) * 1000)
    job = Job(TASK, instance, task_body(name, data), int(time.time() * 1000))
    return await enqueue_job(
        redis,
        keys,
        job,
        job_id=job_id,
        due_ms=due,
        ttl_ms=ttl_ms,
        unique=key is not None,
        once_key=once_key,
        once_ttl_ms=once_ttl_ms,
    )
