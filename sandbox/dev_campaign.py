"""`ringez-worker dev --scenarios campaign`: a 20-contact campaign worked through.

It plays the campaign from outside, as a user would: the CLI hands in the campaign's
Python API (the sandbox may not import the agents), a contact list in the sandbox's
campaign range is created and started, and once every contact is final the per-contact
results are printed, numbers cut to their last four digits.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from redis.asyncio import Redis

from ringez_worker.keys import Keys

NAME = "campaign"
# +1500666 then four digits: tens 1 busy, 2 never answered, else answers; the last digit
# is the one pressed (0: nothing). README "Campaigns", "In the sandbox".
OUTCOMES = "33133231332333133233"  # a tens digit per contact: 14 answer, 3 busy, 3 no answer
CONFIG = {
    "name": "dev",
    "message": "Hello from the dev campaign. Press 1 to confirm, 9 to opt out.",
    "max_concurrent": 5,
    "calls_per_minute": 60,
    "retries": 1,
    "retry_after_seconds": 1,
    "ring_timeout": 2,
    "max_duration": 60,
    "budget": 5,
}
FINAL_STATES = {"draft", "done", "cancelled", "paused"}


def contacts_csv() -> str:
    lines = ["id,phone,name"]
    for i, tens in enumerate(OUTCOMES):
        lines.append(f"d{i + 1:02d},+1500666{i:02d}{tens}{(i * 7) % 10},Contact {i + 1}")
    return "\n".join(lines) + "\n"


def prepare() -> None:
    """The worker's agents must include campaigns (they do by default)."""
    enabled = os.environ.get("AGENTS_ENABLED")
    if enabled is not None and "campaigns" not in enabled.split(","):
        os.environ["AGENTS_ENABLED"] = f"{enabled},campaigns" if enabled else "campaigns"


def _masked(phone: str) -> str:
    return f"+***{phone[-4:]}"


async def play(campaigns: Any, redis: Redis, prefix: str) -> list[str]:
    """Create and start the campaign, wait (bounded) for it to end; the table's lines."""
    keys = Keys(prefix=prefix)
    created = await campaigns.create_campaign(redis, keys, contacts_csv(), CONFIG)
    cid = created.campaign_id
    await campaigns.start(redis, keys, cid)
    deadline = time.monotonic() + 90
    status = await campaigns.status(redis, keys, cid)
    while status["state"] not in FINAL_STATES and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # polling what the workers wrote, bounded by the deadline
        status = await campaigns.status(redis, keys, cid)
    why = f" ({status['reason']})" if status["reason"] else ""
    lines = [
        f"  campaign {cid}: {status['state']}{why}, "
        f"{status['finished']}/{status['total']} contacts final, spent "
        f"{status['spent']:.2f} of {status['budget']:.2f} {status['currency']}",
        f"    {'contact':8} {'number':9} {'status':10} {'tries':>5} {'digits':>6} {'secs':>5} "
        f"{'cost':>6}  calls",
    ]
    for row in await campaigns.export(redis, keys, cid):
        lines.append(
            f"    {row['id']:8} {_masked(row['phone']):9} {row['status']:10} {row['attempts']:>5} "
            f"{row['digits'] or '-':>6} {row['duration']:>5.0f} {row['cost']:>6.2f}  "
            f"{len(row['call_ids'])}"
        )
    return lines
