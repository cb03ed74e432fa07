"""Erasure's shared parts: whose data (`Subject`), and what a store must say to be erased
(`Place`). The places themselves are listed in worker/erase.py; a store in any layer
adds itself there with one line, its class only needing this shape (a Protocol).

Base layer: imports nothing of the service's but the key names' module.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from ringez_worker.keys import Keys


@dataclass
class Subject:
    """Whose data to erase: what was asked for, plus what the places linked to it (a
    session's calls, the deliveries that carry a call, a session or a phone number)."""

    calls: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    deliveries: set[str] = field(default_factory=set)
    # Calls whose events held one of `phones`: reported, not erased (that is `--call`).
    calls_with_phone: set[str] = field(default_factory=set)

    def size(self) -> int:
        return len(self.calls) + len(self.sessions) + len(self.phones) + len(self.deliveries)

    def claim_body(self, delivery_id: str, body: str) -> bool:
        """True (and the delivery and, for a session, its call linked) when an event body
        belongs to the subject: its call, its session, or a phone number anywhere in it."""
        if delivery_id in self.deliveries:
            return True
        data = _data(body)
        call, session = data.get("call_id"), data.get("session_id")
        if call in self.calls:
            self.deliveries.add(delivery_id)
            return True
        if self.phones and self._phone_in(body):
            self.deliveries.add(delivery_id)
            if isinstance(call, str) and call:
                self.calls_with_phone.add(call)
            return True
        if session in self.sessions:
            self.deliveries.add(delivery_id)
            if isinstance(call, str) and call:
                self.calls.add(call)
            return True
        return False

    def _phone_in(self, text: str) -> bool:
        # Not inside a longer number: +1415555012 must not match +14155550123.
        return any(re.search(re.escape(p) + r"(?!\d)", text) for p in self.phones if p in text)

    def names_call(self, text: bytes) -> bool:
        """True when `text` (an error, API paths) names one of the calls as a path
        segment or a quoted value, e.g. `/calls/<call>/actions` or `"<call>"`."""
        for call in self.calls:
            needle = call.encode()
            for mark in (b"/", b'"', b" "):
                at = text.find(mark + needle)
                while at != -1:
                    end = at + 1 + len(needle)
                    if end == len(text) or text[end : end + 1] in (b"/", b'"', b" ", b"?"):
                        return True
                    at = text.find(mark + needle, at + 1)
        return False


class Place(Protocol):
    """One place the service keeps caller data (a row of the README's privacy table)."""

    name: str  # the table's name for it
    where: str  # its keys, e.g. "rz:summary:<call>"
    holds: str  # what caller data it holds
    retention: str  # the setting that bounds it, with its default

    async def link(self, redis: Redis, keys: Keys, subject: Subject) -> None:
        """Add to `subject` what this place can tell belongs to it (may do nothing)."""
        ...

    async def erase(self, redis: Redis, keys: Keys, subject: Subject) -> int:
        """Delete the subject's data here; how many keys, fields or entries went."""
        ...


def _data(body: str) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    data = payload.get("data") if isinstance(payload, dict) else None
    return data if isinstance(data, dict) else {}


def glob_escape(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern (ids are caller-controlled)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def scan_keys(redis: Redis, pattern: str) -> AsyncIterator[bytes]:
    async for key in redis.scan_iter(match=pattern, count=1000):
        yield key


async def delete(redis: Redis, names: Iterable[str | bytes]) -> int:
    """DEL in chunks; how many existed."""
    batch = list(names)
    removed = 0
    for start in range(0, len(batch), 500):
        chunk = batch[start : start + 500]
        if chunk:
            removed += int(await redis.delete(*chunk))
    return removed


def text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
