"""The callback queue from Python: what `POST /callbacks` and `ringez-worker callbacks` call.

from ringez_worker.agents.callbacks import add_callback
result = await add_callback(redis, keys, {"customer_id": "c1", "phone": "+1415..."})
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from ringez_worker.agents.callbacks.agent import schedule_pass
from ringez_worker.agents.callbacks.models import CallbackRequest
from ringez_worker.agents.callbacks.roster import load_roster, read_roster, store_roster
from ringez_worker.agents.callbacks.store import CallbackStore
from ringez_worker.keys import Keys


@dataclass(frozen=True, slots=True)
class Added:
    request_id: str
    status: str  # "new", "same" (an Idempotency-Key replay) or "conflict"


async def add_callback(
    redis: Redis,
    keys: Keys,
    request: CallbackRequest | dict[str, Any],
    *,
    idempotency_key: str | None = None,
    wait_replicas: int = 0,
    wait_timeout_ms: int = 1000,
) -> Added:
    """Store a request durably and queue an assignment pass. Raises pydantic's
    ValidationError for bad input; with an idempotency key, a replay of the same body
    is the same request and a different body is a conflict (nothing stored).
    `wait_replicas`: as REDIS_WAIT_REPLICAS, durable on that many replicas too, or
    NotReplicated."""
    model = request if isinstance(request, CallbackRequest) else CallbackRequest(**request)
    body = orjson.dumps(model.model_dump(), option=orjson.OPT_SORT_KEYS)
    store = CallbackStore(redis, keys.prefix)
    rid, status = await store.add(
        f"cb_{uuid.uuid4().hex[:20]}",
        body,
        model.skill,
        model.language,
        idempotency_key,
        int(time.time() * 1000),
        wait_replicas,
        wait_timeout_ms,
    )
    if status == "new":
        # Durable already: a pass that fails to queue here is made by the next trigger
        # or sweep, which takes every `new` request in.
        await schedule_pass(redis, keys)
    return Added(rid, status)


async def list_waiting(redis: Redis, keys: Keys, limit: int = 100) -> list[dict[str, str]]:
    """Queued requests in priority order, then those not yet taken in and those waiting
    for a retry."""
    store = CallbackStore(redis, keys.prefix)
    k = store.keys
    ids = [
        *(await redis.zrange(k.queue, 0, limit - 1)),
        *(await redis.zrange(k.new, 0, limit - 1)),
        *(await redis.zrange(k.retry, 0, limit - 1)),
    ]
    found = []
    for raw in ids[:limit]:
        record = await store.get(raw.decode())
        if record is not None:
            found.append({"id": raw.decode(), **record})
    return found


async def show(redis: Redis, keys: Keys, request_id: str) -> dict[str, str] | None:
    return await CallbackStore(redis, keys.prefix).get(request_id)


async def request_for_call(redis: Redis, keys: Keys, call_id: str) -> dict[str, str] | None:
    """The callback request a call was placed for (its record with `id`), or None: the
    call is not one of the queue's own."""
    store = CallbackStore(redis, keys.prefix)
    rid = await store.request_of_call(call_id)
    record = None if rid is None else await store.get(rid)
    return None if record is None or rid is None else {"id": rid, **record}


async def cancel(redis: Redis, keys: Keys, request_id: str, ttl: int = 7 * 24 * 3600) -> str:
    """Cancel a waiting request; returns its state before ("" if there is none)."""
    return await CallbackStore(redis, keys.prefix).cancel(request_id, int(time.time() * 1000), ttl)


async def load_roster_file(redis: Redis, keys: Keys, path: str) -> tuple[int, bool]:
    """Load a roster file into Redis; (agents, whether it was a new version)."""
    agents = read_roster(path)
    store = CallbackStore(redis, keys.prefix)
    changed = await store_roster(redis, store.keys, agents)
    if changed:
        await schedule_pass(redis, keys)
    return len(agents), changed


async def agents_with_load(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    return await load_roster(redis, CallbackStore(redis, keys.prefix).keys)
