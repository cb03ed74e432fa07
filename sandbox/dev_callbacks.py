"""`ringez-worker dev --scenarios callbacks`: a small callback queue worked through.

It plays the queue from outside, as a user would: a two-agent roster file and a session
for the worker (through the agents' own settings, from the environment), four requests
POSTed to the receiver's `/callbacks`, then each request's fate from Redis. The sandbox
may not import the agents, so nothing here calls them directly.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from ringez_worker.keys import Keys
from ringez_worker.sandbox.config import BUSY

NAME = "callbacks"
ROSTER = """\
- {id: ana, number: "+15005550911", skills: [billing, general], languages: [en, es]}
- {id: bo, number: "+15005550912", skills: [general], languages: [en], max_concurrent: 2}
"""
REQUESTS = (
    {"customer_id": "c-vip", "phone": "+15005550101", "metadata": {"tier": "vip"}},
    {"customer_id": "c-billing", "phone": "+15005550102", "skill": "billing", "language": "es"},
    {"customer_id": "c-urgent", "phone": "+15005550103", "urgency": "high"},
    {"customer_id": "c-busy", "phone": BUSY},
)
FINAL = {"done", "failed", "cancelled"}


def enable_agent(name: str) -> None:
    """Switch an opt-in agent on for this dev run, as a deployment would (AGENTS_ENABLED),
    keeping whatever else is enabled."""
    enabled = os.environ.get("AGENTS_ENABLED", "support,escalation,recharge,campaigns")
    if name not in enabled.split(","):
        os.environ["AGENTS_ENABLED"] = f"{enabled},{name}" if enabled else name


def prepare(sandbox: Any) -> tuple[str, str]:
    """Configure the worker's callback agent through the environment (as a deployment
    would); returns the CALLBACKS_TOKEN for the receiver and the roster file written (the
    caller removes it when dev stops)."""
    session = sandbox.state.create_session(initial_minutes=600).session_id
    roster = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="ringez-roster-", delete=False)
    roster.write(ROSTER)
    roster.close()
    enable_agent("callbacks")
    os.environ.setdefault("CALLBACK_SESSION_ID", session)
    os.environ.setdefault("CALLBACK_ROSTER", roster.name)
    os.environ.setdefault("CALLBACK_SWEEP_SECONDS", "1")
    os.environ.setdefault("CALLBACK_RETRY_AFTER_SECONDS", "1")
    os.environ.setdefault("CALLBACK_MAX_TRIES", "2")
    return secrets.token_urlsafe(16), roster.name


async def play(base_url: str, token: str, redis: Redis, prefix: str) -> list[str]:
    """POST the requests, wait (bounded) for each to end; the summary's lines."""
    ids: list[tuple[str, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as http:
        for body in REQUESTS:
            async with http.post(
                f"{base_url}/callbacks",
                data=orjson.dumps(body),
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                answer = await resp.json(content_type=None)
                if resp.status != 202:
                    return [f"  callbacks: POST /callbacks answered {resp.status} {answer}"]
                ids.append((answer["request_id"], body))
    keys = Keys(prefix=prefix)
    deadline = time.monotonic() + 60
    records: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        for rid, _ in ids:
            raw = await redis.hgetall(keys.callback(rid))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            records[rid] = {k.decode(): v.decode() for k, v in raw.items()}
        if all(r.get("state") in FINAL for r in records.values()):
            break
        await asyncio.sleep(0.2)  # polling what the workers wrote, bounded by the deadline
    lines = ["  callbacks: 4 requests, roster ana (billing, en/es) and bo (en, 2 at once)"]
    for rid, body in ids:
        r = records.get(rid, {})
        why = f" ({r['reason']})" if r.get("reason") else ""
        lines.append(
            f"    {body['customer_id']:10} priority={r.get('priority', '-'):>3} "
            f"agent={r.get('agent', '-'):4} tries={r.get('tries', '0')} "
            f"call={r.get('call_id', '-')} -> {r.get('state', '?')}{why}"
        )
    return lines
