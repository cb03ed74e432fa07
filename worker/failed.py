"""The failed-events record: deliveries whose handlers kept failing, kept for replay.

Values are read defensively: a record that does not parse or lacks what a replay needs
(written by an older version, edited by hand, truncated) is reported as a `BadRecord`,
one per record, and skipped, never a traceback that hides every other record.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.asyncio import Redis

from ringez_worker.jobs import KINDS, REPLAY_PENDING, WEBHOOK, Job, enqueue_job
from ringez_worker.keys import Keys

# What a replay needs, and its type.
_REQUIRED: dict[str, type] = {"delivery_id": str, "handlers": dict, "body": str}
# Shown by list/show; older records may lack them, but present they must be numbers.
_OPTIONAL: dict[str, type] = {"attempts": int, "first_failed_ms": int, "last_failed_ms": int}


class BadRecord(Exception):
    """A failed-events value that cannot be read or replayed; names the record and why."""

    def __init__(self, field: bytes | str, reason: str) -> None:
        self.delivery_id = _label(field)
        self.reason = reason
        super().__init__(f"bad record {self.delivery_id}: {reason}")


def parse_record(field: bytes | str, raw: bytes | str) -> dict[str, Any]:
    """The record stored under `field`, checked; raises BadRecord saying what is wrong.

    Reasons name fields and types only: the body may hold caller data.
    """
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRecord(field, "not JSON") from None
    if not isinstance(record, dict):
        raise BadRecord(field, f"not a JSON object but {type(record).__name__}")
    missing = [name for name in _REQUIRED if name not in record]
    if missing:
        raise BadRecord(field, "missing " + ", ".join(missing))
    wrong = [
        name
        for name, kind in {**_REQUIRED, **_OPTIONAL}.items()
        if name in record and (not isinstance(record[name], kind) or isinstance(record[name], bool))
    ]
    if wrong:
        raise BadRecord(field, "wrong type for " + ", ".join(wrong))
    name = field.decode(errors="replace") if isinstance(field, bytes) else field
    if record["delivery_id"] != name:
        raise BadRecord(field, "delivery_id does not match the record's key")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in record["handlers"].items()):
        raise BadRecord(field, "handlers must map handler names to error text")
    _check_body(field, record["body"])
    return record


def _check_body(field: bytes | str, body: str) -> None:
    # What the dispatcher needs to run it at all; the event contract is its own check.
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRecord(field, "body is not JSON") from None
    if not isinstance(payload, dict):
        raise BadRecord(field, "body is not a JSON object")
    if not isinstance(payload.get("event"), str) or not isinstance(payload.get("data"), dict):
        raise BadRecord(field, "body has no event name or no data object")


async def scan_failed(redis: Redis, keys: Keys) -> tuple[list[dict[str, Any]], list[BadRecord]]:
    """(every good record, oldest failure first, without bodies; every bad one)."""
    records: list[dict[str, Any]] = []
    bad: list[BadRecord] = []
    for field, raw in (await redis.hgetall(keys.failed)).items():  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        try:
            record = parse_record(field, raw)
        except BadRecord as exc:
            bad.append(exc)
            continue
        record.pop("body", None)
        records.append(record)
    records.sort(key=lambda r: r.get("first_failed_ms", 0))
    bad.sort(key=lambda b: b.delivery_id)
    return records, bad


async def list_failed(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every good record, oldest failure first, without the bodies (bad ones skipped)."""
    return (await scan_failed(redis, keys))[0]


async def get_failed(redis: Redis, keys: Keys, delivery_id: str) -> dict[str, Any] | None:
    """The record for an id or unique prefix; None if there is none, BadRecord if unusable."""
    field = await _find(redis, keys, delivery_id)
    if field is None:
        return None
    raw = await redis.hget(keys.failed, field)  # type: ignore[misc,arg-type]  # redis-py: Awaitable[T] | T; field: str
    return parse_record(field, raw) if raw is not None else None


async def replay(redis: Redis, keys: Keys, delivery_id: str, ttl_ms: int) -> str | None:
    """Queue the delivery again for only the handlers that failed; the record stays until
    the replay succeeds. Returns the job id, None if there is no such record; raises
    BadRecord, queueing nothing, if the record cannot be replayed."""
    record = await get_failed(redis, keys, delivery_id)
    if record is None:
        return None
    handlers = [name for name in record["handlers"] if not name.startswith("<")]
    now = int(time.time() * 1000)
    kind = record.get("kind", WEBHOOK)
    if kind not in KINDS:
        raise BadRecord(record["delivery_id"], "its job kind is not one this worker runs")
    # The record's trace context (tracing was on when it failed): the replay's spans
    # link to the original delivery's trace.
    origin = record.get("trace")
    link = (
        origin
        if isinstance(origin, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in origin.items())
        else None
    )
    job = Job(
        kind,
        record["delivery_id"],
        record["body"],
        now,
        handlers or [REPLAY_PENDING],
        trace_link=link,
    )
    job_id = f"{record['delivery_id']}:replay:{now}"
    await enqueue_job(redis, keys, job, job_id=job_id, ttl_ms=ttl_ms)
    return job_id


async def purge(redis: Redis, keys: Keys, delivery_id: str | None = None) -> int:
    """Delete one record (bad ones too), or all of them; returns how many went."""
    if delivery_id is None:
        count = await redis.hlen(keys.failed)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        await redis.delete(keys.failed)
        return count
    field = await _find(redis, keys, delivery_id)
    return 0 if field is None else await redis.hdel(keys.failed, field)  # type: ignore[misc,arg-type]  # redis-py: Awaitable[T] | T; field: str


async def _find(redis: Redis, keys: Keys, delivery_id: str) -> bytes | str | None:
    """The hash field for an exact id or a unique prefix, without reading any value."""
    wanted = delivery_id.strip().lower()
    if wanted and await redis.hexists(keys.failed, wanted):  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        return wanted
    names = await redis.hkeys(keys.failed)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    matches = [n for n in names if wanted and _text(n).startswith(wanted)]
    return matches[0] if len(matches) == 1 else None


def _text(field: bytes | str) -> str:
    return field.decode(errors="replace") if isinstance(field, bytes) else field


def _label(field: bytes | str) -> str:
    # A corrupted key may hold anything: show a short, printable form of it.
    text = _text(field)[:16]
    return text if text.isprintable() else repr(text)
