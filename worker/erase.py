"""`ringez-worker erase`: remove one call's, one session's or one phone number's data
from every place the service keeps caller data (README, "Privacy").

Each place is one small object (ringez_worker/erasure.py's `Place`): its name, what it
holds, its retention setting, how to find the subject's data and how to delete it.
`PLACES` lists them; a new store adds its own with one line. Erasure is two steps:
the places link what they can tell belongs to the subject (a session's calls from the
summaries, the deliveries that carry a call from the delivery log) until nothing new
turns up, then each deletes its part and says how much. Running it again removes
nothing more and reports zero: it is idempotent.

Erase after the call has ended: an event still arriving is stored again as it comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from ringez_worker.agents.callbacks.erasure import CallbackRequests
from ringez_worker.agents.campaign.erasure import CampaignContacts
from ringez_worker.erasure import Place, Subject, delete, glob_escape, scan_keys, text
from ringez_worker.jobs import Job
from ringez_worker.keys import Keys
from ringez_worker.worker import failed


def _json(raw: bytes | str | None) -> dict:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class DeliveryLog:
    name = "delivery log"
    where = "rz:log (stream)"
    holds = "webhook bodies (caller numbers, transcript text), handler runs, API requests"
    retention = "DELIVERY_LOG_RETENTION (86400 s), DELIVERY_LOG_MAX_ENTRIES (20000)"

    async def _entries(self, redis: Redis, keys: Keys, subject: Subject) -> list[bytes]:
        """The subject's entry ids: its receipts, and the runs and duplicates of them."""
        found: list[bytes] = []
        low = "-"
        while True:
            page = await redis.xrange(keys.deliveries, min=low, max="+", count=1000)
            for entry_id, fields in page:
                kind = fields.get(b"k")
                if kind == b"r":
                    try:
                        job = Job.from_record(fields[b"j"])
                    except (ValueError, KeyError):
                        continue
                    if subject.claim_body(job.id, job.body):
                        found.append(entry_id)
                elif text(fields.get(b"d", b"")) in subject.deliveries:
                    found.append(entry_id)
                elif kind == b"h" and subject.names_call(
                    fields.get(b"a", b"") + b" " + fields.get(b"e", b"")
                ):
                    # A task's run (a quality check, say) is keyed by the task, not the
                    # call, but its API requests and errors name the call.
                    found.append(entry_id)
            if len(page) < 1000:
                return found
            low = "(" + text(page[-1][0])

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        await self._entries(redis, keys, subject)

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        ids = await self._entries(redis, keys, subject)
        removed = 0
        for start in range(0, len(ids), 500):
            removed += int(await redis.xdel(keys.deliveries, *ids[start : start + 500]))
        return removed


@dataclass(frozen=True)
class FailedEvents:
    name = "failed events"
    where = "rz:failed (hash), rz:failed:age"
    holds = "whole webhook bodies (caller numbers, transcript text), handler errors"
    retention = "FAILED_RETENTION_SECONDS (604800 s), FAILED_MAX_RECORDS (10000)"

    async def _fields(self, redis: Redis, keys: Keys, subject: Subject) -> list[bytes]:
        found = []
        async for field, raw in redis.hscan_iter(keys.failed, count=500):
            body = _json(raw).get("body")
            if isinstance(body, str) and subject.claim_body(text(field), body):
                found.append(field)
            elif text(field) in subject.deliveries:
                found.append(field)
        return found

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        await self._fields(redis, keys, subject)

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        return await failed.forget(redis, keys, *await self._fields(redis, keys, subject))


@dataclass(frozen=True)
class QueuedJobs:
    name = "queued jobs"
    where = "arq:job:<id> + the queue's sorted set"
    holds = "bodies of deliveries and tasks not yet run (or waiting for a retry)"
    retention = "until run; HANDLER_STATE_TTL_SECONDS (604800 s) at most"

    async def _jobs(self, redis: Redis, keys: Keys, subject: Subject) -> list[str]:
        found = []
        ids = [text(m) async for m, _ in redis.zscan_iter(keys.queue, count=1000)]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            records = await redis.mget([keys.job(i) for i in chunk])
            for job_id, raw in zip(chunk, records, strict=True):
                if raw is None:
                    continue
                try:
                    job = Job.from_record(raw)
                except ValueError:
                    continue
                if subject.claim_body(job.id, job.body):
                    found.append(job_id)
        return found

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        await self._jobs(redis, keys, subject)

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        ids = await self._jobs(redis, keys, subject)
        if not ids:
            return 0
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.queue, *ids)
            pipe.delete(*[keys.job(i) for i in ids])
            _, removed = await pipe.execute()
        return int(removed)


@dataclass(frozen=True)
class CallState:
    name = "per-call agent state"
    where = "rz:call:<call>:* (segments, live, intents, sentiments, escalation, quality:*)"
    holds = "transcript segments and the live line, intents, sentiment, the escalation claim"
    retention = (
        "SUPPORT_STATE_TTL_SECONDS (14400 s), ESCALATION_CLAIM_TTL_SECONDS (86400 s), "
        "QUALITY_RECORD_TTL_SECONDS (604800 s)"
    )

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        if not subject.sessions:
            return
        # The support agent's `opened` record names the call's session.
        async for key in scan_keys(redis, keys.call_state("*", "opened")):
            if _json(await redis.get(key)).get("session_id") in subject.sessions:
                call = text(key).removeprefix(f"{keys.prefix}:call:").removesuffix(":opened")
                subject.calls.add(call)

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        names = []
        for call in subject.calls:
            names += [k async for k in scan_keys(redis, keys.call_state(glob_escape(call), "*"))]
        return await delete(redis, names)


@dataclass(frozen=True)
class Summaries:
    name = "call summaries"
    where = "rz:summary:<call>"
    holds = "outcome, duration, cost, intents, sentiment, escalation (no transcript text)"
    retention = "SUMMARY_TTL_SECONDS (604800 s)"

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        if not subject.sessions:
            return
        async for key in scan_keys(redis, keys.summary("*")):
            summary = _json(await redis.get(key))
            if summary.get("session_id") in subject.sessions and summary.get("call_id"):
                subject.calls.add(str(summary["call_id"]))

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        return await delete(redis, [keys.summary(c) for c in subject.calls])


@dataclass(frozen=True)
class QualityRecords:
    name = "quality records"
    where = "rz:call:<call>:quality:record"
    holds = "a call's MOS, packet loss, latency, breaches (read by the report and console)"
    retention = "QUALITY_RECORD_TTL_SECONDS (604800 s), as its writer sets it"

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        return None

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        return await delete(redis, [keys.quality(c) for c in subject.calls])


@dataclass(frozen=True)
class RechargeState:
    name = "recharge state"
    where = "rz:recharge:<session>:{lock,episode,pending,charged,daily:<day>}"
    holds = "a session's charge episode, last charge, charges per day"
    retention = "2 days (charged, daily), 7 days (pending, episode), RECHARGE_LOCK_SECONDS"

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        return None

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        names: list[str | bytes] = []
        for session in subject.sessions:
            # Named one by one: a session called "charge" must not match the charge records.
            base = f"{keys.prefix}:recharge:{session}"
            names += [f"{base}:{n}" for n in ("lock", "episode", "pending", "charged")]
            names += [k async for k in scan_keys(redis, f"{glob_escape(base)}:daily:*")]
        return await delete(redis, names)


@dataclass(frozen=True)
class ChargeRecords:
    name = "charge records"
    where = "rz:recharge:charge:<key>, rz:recharge:charges"
    holds = "one per charge: session, amount, transaction id (for the daily report)"
    retention = "RECHARGE_RECORD_TTL_SECONDS (3024000 s)"

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        return None

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        if not subject.sessions:
            return 0
        names = []
        async for key in scan_keys(redis, keys.recharge("*")):
            if _json(await redis.get(key)).get("session_id") in subject.sessions:
                names.append(key)
        if names:
            await redis.zrem(keys.recharges, *names)
        return await delete(redis, names)


@dataclass(frozen=True)
class Reports:
    name = "daily reports"
    where = "rz:report:<id>, rz:reports"
    holds = "aggregate pages; one of a single session (REPORT_SESSION_ID) names it"
    retention = "REPORT_KEEP (14 pages)"

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        return None

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        if not subject.sessions:
            return 0
        removed = 0
        for report_id in await redis.lrange(keys.reports, 0, -1):  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            key = keys.report(text(report_id))
            if _json(await redis.get(key)).get("session_id") in subject.sessions:
                await redis.lrem(keys.reports, 0, report_id)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
                removed += int(await redis.delete(key))
        return removed


@dataclass(frozen=True)
class CompletionRecords:
    name = "completion records"
    where = "rz:done:<delivery>, rz:deferrals:<delivery>"
    holds = "which handlers of a delivery succeeded, its deferrals (no caller data)"
    retention = "DONE_RECORD_TTL_SECONDS (3600 s), HANDLER_STATE_TTL_SECONDS (604800 s)"

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        return None

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        # Keyed by delivery id only; gone with the delivery so nothing points at it.
        names = [keys.done(d) for d in subject.deliveries]
        names += [keys.deferrals(d) for d in subject.deliveries]
        return await delete(redis, names)


# Every place erase reaches, in the order it erases (deliveries last: the places before
# may still link by them). A new store: one line here.
PLACES: tuple[Place, ...] = (
    QueuedJobs(),
    CallState(),
    Summaries(),
    QualityRecords(),
    RechargeState(),
    ChargeRecords(),
    Reports(),
    FailedEvents(),
    DeliveryLog(),
    CompletionRecords(),
    CallbackRequests(),
    CampaignContacts(),
)


async def link(
    redis: Redis, keys: Keys, subject: Subject, places: Sequence[Place] = PLACES
) -> Subject:
    """Grow `subject` with what the places link to it, until a round adds nothing."""
    while True:
        before = subject.size()
        for place in places:
            await place.link(redis, keys, subject)
        if subject.size() == before:
            return subject


async def erase(
    redis: Redis, keys: Keys, subject: Subject, places: Sequence[Place] = PLACES
) -> dict[str, int]:
    """Erase the subject everywhere; how much each place removed, by its name."""
    await link(redis, keys, subject, places)
    return {place.name: await place.erase(redis, keys, subject) for place in places}
