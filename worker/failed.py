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
from ringez_worker.lua import LuaScript

# KEYS: the record hash, its age index (id -> last failure ms), the eviction counters.
# ARGV: delivery id ('' to only trim), record, now ms, retention ms, max records.
# The write and the trims are one script, so the record never holds more than the cap nor
# anything past its retention, and every record that leaves is counted: nothing vanishes
# silently. Records of an older version have no age yet: they are indexed as of now (once,
# when the index is short of the hash), so they leave after one retention period too.
# Returns {removed by retention, removed by cap}.
_STORE = LuaScript(
    """
local now = tonumber(ARGV[3])
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
end
if redis.call('ZCARD', KEYS[2]) < redis.call('HLEN', KEYS[1]) then
  for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
    redis.call('ZADD', KEYS[2], 'NX', now, id)
  end
end
local expired, capped = 0, 0
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, 1000)
for _, id in ipairs(old) do
  expired = expired + redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
local over = redis.call('HLEN', KEYS[1]) - tonumber(ARGV[5])
while over > 0 do
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  if #oldest == 0 then break end
  for i = 1, #oldest, 2 do capped = capped + redis.call('HDEL', KEYS[1], oldest[i]) end
  over = redis.call('HLEN', KEYS[1]) - tonumber(ARGV[5])
end
if expired > 0 then redis.call('HINCRBY', KEYS[3], 'retention', expired) end
if capped > 0 then redis.call('HINCRBY', KEYS[3], 'cap', capped) end
return {expired, capped}
"""
)


async def store(
    redis: Redis,
    keys: Keys,
    delivery_id: str,
    record: bytes,
    *,
    retention_seconds: int,
    max_records: int,
) -> tuple[int, int]:
    """Write one record and trim the oldest past retention or the cap, atomically.

    Returns (removed by retention, removed by the cap)."""
    return await _trim_or_store(redis, keys, delivery_id, record, retention_seconds, max_records)


async def trim(
    redis: Redis, keys: Keys, *, retention_seconds: int, max_records: int
) -> tuple[int, int]:
    """Remove records past retention or over the cap without writing one (the sweeper)."""
    return await _trim_or_store(redis, keys, "", b"", retention_seconds, max_records)


async def _trim_or_store(
    redis: Redis, keys: Keys, delivery_id: str, record: bytes, retention_s: int, cap: int
) -> tuple[int, int]:
    now = int(time.time() * 1000)
    expired, capped = await _STORE(
        redis,
        [keys.failed, keys.failed_age, keys.failed_evicted],
        [delivery_id, record, now, retention_s * 1000, cap],
    )
    return int(expired), int(capped)


async def evicted(redis: Redis, keys: Keys) -> dict[str, int]:
    """Fleet-wide counts of records removed by retention and by the cap, ever."""
    raw = await redis.hgetall(keys.failed_evicted)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    counts = {_text(k): int(v) for k, v in raw.items()}
    return {"retention": counts.get("retention", 0), "cap": counts.get("cap", 0)}


async def forget(redis: Redis, keys: Keys, *fields: bytes | str) -> int:
    """Delete records (and their place in the age index); returns how many were there."""
    if not fields:
        return 0
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.failed, *fields)  # type: ignore[arg-type]  # redis-py: fields as str only
        pipe.zrem(keys.failed_age, *fields)
        removed, _ = await pipe.execute()
    return int(removed)


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
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hlen(keys.failed)
            pipe.delete(keys.failed, keys.failed_age)
            count, _ = await pipe.execute()
        return int(count)
    field = await _find(redis, keys, delivery_id)
    return 0 if field is None else await forget(redis, keys, field)


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
