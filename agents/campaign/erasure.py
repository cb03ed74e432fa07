"""The campaigns' place in erasure (worker/erase.py's PLACES; README, "Privacy").

`--phone`: every campaign contact with that number goes whole (number, name, time zone,
metadata, digits, call ids), with its index entries and call maps, and the number leaves
the campaigns' do-not-call sets; a contact still on a call frees its slot and its
reservation, so the limits stay true. `--call`: the call's map, and its id in the
contact's record. What stays: the opt-out set's SHA-1 of a number that pressed the
opt-out digit, so an erased person is still never called again (a suppression list).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from ringez_worker.agents.campaign.store import CampaignKeys
from ringez_worker.erasure import Subject, scan_keys, text
from ringez_worker.keys import Keys

_HOLDING_A_SLOT = {"dialing", "calling", "answered"}


@dataclass(frozen=True)
class CampaignContacts:
    name = "campaign contacts"
    where = "rz:campaign:<id>:contact:<contact>, rz:campaign:call:<call>, rz:campaign:<id>:dnc"
    holds = "a contact's number, name, time zone, CSV metadata; attempts, digits, calls, cost"
    retention = "CAMPAIGN_RECORD_TTL_SECONDS (2592000 s) once the campaign ends"

    async def _matching(
        self, redis: Redis, keys: Keys, subject: Subject
    ) -> list[tuple[str, dict[str, str]]]:
        found = []
        async for key in scan_keys(redis, f"{keys.prefix}:campaign:*:contact:*"):
            raw = await redis.hgetall(text(key))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            record = {text(k): text(v) for k, v in raw.items()}
            if record.get("phone") in subject.phones:
                subject.calls_with_phone.update(c for c in record.get("calls", "").split(",") if c)
                found.append((text(key), record))
        return found

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        if subject.phones:
            await self._matching(redis, keys, subject)

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        k = CampaignKeys(keys.prefix)
        removed = 0
        for key, record in await self._matching(redis, keys, subject):
            cid, contact = key.removeprefix(f"{keys.prefix}:campaign:").split(":contact:", 1)
            async with redis.pipeline(transaction=True) as pipe:
                for index in (k.contacts(cid), k.pending(cid), k.live(cid)):
                    pipe.zrem(index, contact)
                for call in (c for c in record.get("calls", "").split(",") if c):
                    pipe.delete(k.call(call))
                if record.get("state") in _HOLDING_A_SLOT:
                    pipe.hincrby(k.campaign(cid), "live", -1)
                    pipe.hincrbyfloat(
                        k.campaign(cid), "reserved", -float(record.get("reserved") or 0)
                    )
                pipe.delete(key)
                await pipe.execute()
            removed += 1
        if subject.phones:
            async for dnc in scan_keys(redis, f"{keys.prefix}:campaign:*:dnc"):
                removed += int(await redis.srem(text(dnc), *subject.phones))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        for call in subject.calls:
            raw = await redis.get(k.call(call))
            if raw is None:
                continue
            cid, contact, _ = text(raw).split("|")
            record_key = k.contact(cid, contact)
            calls = text(await redis.hget(record_key, "calls") or b"")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            kept = ",".join(c for c in calls.split(",") if c and c != call)
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(k.call(call))
                if await redis.exists(record_key):
                    pipe.hset(record_key, "calls", kept)
                    if text(await redis.hget(record_key, "call_id") or b"") == call:  # type: ignore[misc]  # redis-py: Awaitable[T] | T
                        pipe.hdel(record_key, "call_id")
                await pipe.execute()
            removed += 1
        return removed
