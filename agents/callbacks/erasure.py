"""The callback queue's place in erasure (worker/erase.py's PLACES; README, "Privacy").

A request holds the customer's number and metadata; a request that belongs to an erased
call, or whose number is erased, goes whole, with its index entries and call map. One
still on a live call frees its agent's slot, so the roster's load stays true.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from ringez_worker.agents.callbacks.store import CallbackKeys
from ringez_worker.erasure import Subject, scan_keys, text
from ringez_worker.keys import Keys

_HOLDING_A_SLOT = {"assigned", "dialing", "calling", "transferring", "live"}


@dataclass(frozen=True)
class CallbackRequests:
    name = "callback requests"
    where = "rz:callback:<id>, rz:callback:call:<call>, rz:callbacks:{new,queue,retry,assigned}"
    holds = "a customer's number, id, skill, language, metadata; the call placed and its agent"
    retention = "CALLBACK_RECORD_TTL_SECONDS (604800 s) once it ends"

    async def _matching(self, redis: Redis, keys: Keys, subject: Subject) -> list[tuple[str, dict]]:
        found = []
        async for key in scan_keys(redis, f"{keys.prefix}:callback:cb_*"):
            raw = await redis.hgetall(text(key))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            record = {text(k): text(v) for k, v in raw.items()}
            try:
                phone = orjson.loads(record.get("body", "{}")).get("phone")
            except orjson.JSONDecodeError:
                phone = None
            call = record.get("call_id")
            if phone in subject.phones or (call and call in subject.calls):
                if phone in subject.phones and call:
                    subject.calls_with_phone.add(call)
                found.append((text(key).rsplit(":", 1)[1], record))
        return found

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        if subject.phones:
            await self._matching(redis, keys, subject)

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        k = CallbackKeys(keys.prefix)
        removed = 0
        for rid, record in await self._matching(redis, keys, subject):
            async with redis.pipeline(transaction=True) as pipe:
                for index in (k.new, k.queue, k.retry, k.assigned):
                    pipe.zrem(index, rid)
                if record.get("call_id"):
                    pipe.delete(k.call(record["call_id"]))
                if record.get("state") in _HOLDING_A_SLOT and record.get("agent"):
                    pipe.hincrby(k.load, record["agent"], -1)
                pipe.delete(k.request(rid))
                await pipe.execute()
            removed += 1
        # Call maps of erased calls whose request is already gone.
        for call in subject.calls:
            removed += int(await redis.delete(k.call(call)))
        return removed
