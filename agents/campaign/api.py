"""Campaigns from Python: what `ringez-worker campaign ...` calls, and what a handler or a
script can call too (only Redis is needed; the workers place the calls).

    from ringez_worker.agents.campaign import api
    created = await api.create_campaign(redis, keys, "contacts.csv", {"message": "Hi!"})
    await api.start(redis, keys, created.campaign_id)
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from ringez_worker.agents.campaign.agent import schedule_pass
from ringez_worker.agents.campaign.models import (
    CampaignConfig,
    ContactsFile,
    parse_contacts,
    parse_dnc,
)
from ringez_worker.agents.campaign.store import FINAL, IN_PROGRESS, CampaignStore, optout_digest
from ringez_worker.keys import Keys

DEFAULT_RATE_ESTIMATE = 0.05  # per minute (CAMPAIGN_RATE_ESTIMATE's default)


class CampaignError(ValueError):
    """A request that cannot be done as asked (unknown campaign, wrong state)."""


class NoContacts(CampaignError):
    """Every row was left out: nothing is stored. `problems` says why, by line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("no contact to call: every row was left out")
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Created:
    campaign_id: str
    contacts: int
    problems: list[str] = field(default_factory=list)  # rows not taken, by line


def _ms() -> int:
    return int(time.time() * 1000)


async def create_campaign(
    redis: Redis,
    keys: Keys,
    contacts: str | Path | ContactsFile,
    config: CampaignConfig | dict[str, Any],
    *,
    dnc: str | Path | frozenset[str] | None = None,
) -> Created:
    """Store a campaign (a draft: `start` begins calling). `contacts`: a CSV path, its
    text, or a parsed file; `dnc`: a do-not-call file path or numbers. Raises pydantic's
    ValidationError for bad settings, ValueError for a file with no phone column; bad
    rows are reported in `problems`, never raised (NoContacts if no row is left)."""
    model = config if isinstance(config, CampaignConfig) else CampaignConfig(**config)
    problems: list[str] = []
    numbers: frozenset[str] = frozenset()
    if isinstance(dnc, frozenset):
        numbers = dnc
    elif dnc is not None:
        numbers, problems = parse_dnc(_read(dnc), region=model.region)
    if isinstance(contacts, ContactsFile):
        parsed = contacts
    else:
        parsed = parse_contacts(_read(contacts), region=model.region, do_not_call=numbers)
    store = CampaignStore(redis, keys.prefix)
    # Numbers that opted out of an earlier campaign are left out now, not dialed later.
    opted = await _drop_opted_out(redis, store.keys.optout, parsed)
    if not parsed.contacts:
        raise NoContacts(problems + parsed.problems() + opted)
    cid = f"cmp_{uuid.uuid4().hex[:12]}"
    # The worker that opens the campaign sets its own CAMPAIGN_RATE_ESTIMATE instead.
    await store.create(cid, model, parsed.contacts, numbers, DEFAULT_RATE_ESTIMATE, _ms())
    return Created(cid, len(parsed.contacts), problems + parsed.problems() + opted)


async def _drop_opted_out(redis: Redis, optout: str, parsed: ContactsFile) -> list[str]:
    """Leave out contacts whose number pressed the opt-out digit in any campaign."""
    if not parsed.contacts:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for c in parsed.contacts:
            pipe.sismember(optout, optout_digest(c.phone))
        flags = await pipe.execute()
    dropped = [c for c, flag in zip(parsed.contacts, flags, strict=True) if flag]
    parsed.contacts = [c for c, flag in zip(parsed.contacts, flags, strict=True) if not flag]
    return [f"line {c.line}: opted out in an earlier campaign, not called" for c in dropped]


def _read(source: str | Path) -> str:
    path = Path(source)
    if isinstance(source, Path) or ("\n" not in source and path.exists()):
        return path.read_text(encoding="utf-8-sig")
    return str(source)


async def _require(store: CampaignStore, cid: str) -> dict[str, str]:
    record = await store.get(cid)
    if record is None:
        raise CampaignError(f"no campaign {cid}")
    return record


async def _move(redis: Redis, keys: Keys, cid: str, frm: tuple[str, ...], to: str, why: str) -> str:
    store = CampaignStore(redis, keys.prefix)
    await _require(store, cid)
    before = await store.move(cid, frm, to, why, _ms())
    if before not in frm:
        raise CampaignError(f"{cid} is {before}: cannot {why or to} it")
    await schedule_pass(redis, keys, cid)
    return before


async def start(redis: Redis, keys: Keys, cid: str) -> None:
    """Begin calling: a worker opens the campaign's session and dials."""
    await _move(redis, keys, cid, ("draft",), "starting", "")


async def pause(redis: Redis, keys: Keys, cid: str, reason: str = "paused by user") -> None:
    """Stop new dials at once; live calls finish."""
    await _move(redis, keys, cid, ("running", "starting"), "paused", reason)


async def resume(redis: Redis, keys: Keys, cid: str) -> None:
    await _move(redis, keys, cid, ("paused",), "running", "")


async def cancel(redis: Redis, keys: Keys, cid: str) -> str:
    """End the campaign: no more dials, waiting contacts end `cancelled`; live calls
    finish. Returns the state before."""
    store = CampaignStore(redis, keys.prefix)
    await _require(store, cid)
    before = await store.cancel(cid, _ms())
    if before in ("done", "cancelled"):
        raise CampaignError(f"{cid} is {before} already")
    await schedule_pass(redis, keys, cid)  # sets the record's expiry once nothing is live
    return before


async def list_campaigns(redis: Redis, keys: Keys) -> list[dict[str, str]]:
    store = CampaignStore(redis, keys.prefix)
    found = []
    for cid in await store.ids():
        record = await store.get(cid)
        if record is None:  # expired (CAMPAIGN_RECORD_TTL_SECONDS)
            await redis.zrem(store.keys.all, cid)
            continue
        found.append({"id": cid, **{k: v for k, v in record.items() if k != "config"}})
    return found


async def status(redis: Redis, keys: Keys, cid: str) -> dict[str, Any]:
    """Counts by contact state, spend against budget, and an ETA from the pace so far."""
    store = CampaignStore(redis, keys.prefix)
    record = await _require(store, cid)
    contacts = await store.contacts(cid)
    counts = Counter(c.get("state", "?") for _, c in contacts)
    total = len(contacts)
    finished = sum(counts[s] for s in FINAL)
    started = int(record.get("started_ms") or 0)
    eta = None
    if started and finished and finished < total and record["state"] == "running":
        per_contact = (_ms() - started) / 1000 / finished
        eta = round(per_contact * (total - finished))
    return {
        "id": cid,
        "name": record.get("name", ""),
        "state": record["state"],
        "reason": record.get("reason", ""),
        "total": total,
        "finished": finished,
        "in_progress": sum(counts[s] for s in IN_PROGRESS),
        "counts": dict(sorted(counts.items())),
        "spent": round(float(record.get("spent", 0)), 4),
        "reserved": round(max(0.0, float(record.get("reserved", 0))), 4),
        "budget": float(record.get("budget", 0)),
        "currency": record.get("currency", ""),
        "live": int(record.get("live", 0)),
        "dialed": int(record.get("dialed", 0)),
        "answered": int(record.get("answered", 0)),
        "eta_seconds": eta,
        "session_id": record.get("session_id", ""),
    }


EXPORT_FIELDS = (
    "id",
    "phone",
    "name",
    "status",
    "attempts",
    "digits",
    "duration",
    "cost",
    "call_ids",
    "reason",
    "metadata",
)


async def export(redis: Redis, keys: Keys, cid: str) -> list[dict[str, Any]]:
    """One row per contact: attempts, final status, digits pressed, duration, cost, call ids."""
    store = CampaignStore(redis, keys.prefix)
    await _require(store, cid)
    rows = []
    for contact, c in await store.contacts(cid):
        rows.append(
            {
                "id": contact,
                "phone": c.get("phone", ""),
                "name": c.get("name", ""),
                "status": c.get("state", ""),
                "attempts": int(c.get("attempts", 0)),
                "digits": c.get("digits", ""),
                "duration": float(c.get("duration", 0) or 0),
                "cost": round(float(c.get("cost", 0) or 0), 4),
                "call_ids": [x for x in c.get("calls", "").split(",") if x],
                "reason": c.get("reason", ""),
                "metadata": orjson.loads(c.get("metadata") or "{}"),
            }
        )
    return rows


async def contact_for_call(redis: Redis, keys: Keys, call_id: str) -> dict[str, Any] | None:
    """The campaign and contact a call was placed for (campaign id and name, contact id,
    attempt, its record), or None: the call is not one of the campaigns' own."""
    store = CampaignStore(redis, keys.prefix)
    mapped = await store.of_call(call_id)
    if mapped is None:
        return None
    cid, contact, attempt = mapped
    record = await store.contact(cid, contact) or {}
    name = await redis.hget(store.keys.campaign(cid), "name")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    return {
        "campaign_id": cid,
        "campaign_name": name.decode() if isinstance(name, bytes) else (name or ""),
        "contact": contact,
        "attempt": attempt,
        **record,
    }
