"""One record per successful charge, for the daily report (the agent's own counters are
per session and per day only).

Keyed by the charge's idempotency key: a retry of the same episode gets the same
transaction from Ringez and finds its record already written, so it never adds a second.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.asyncio import Redis

from ringez_worker.keys import Keys
from ringez_worker.lua import LuaScript

# SET NX first: only the first write of a key indexes it, so a retry changes nothing.
# The index is trimmed of records past their TTL on every write, so it stays bounded.
_RECORD = LuaScript(
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""
)


async def record_charge(
    redis: Redis,
    keys: Keys,
    *,
    session_id: str,
    idempotency_key: str,
    transaction_id: str,
    amount: float,
    currency: str,
    ttl_seconds: int,
    charged_at: float | None = None,
) -> bool:
    """Keep one charge's record for `ttl_seconds`; False if this episode's was already kept."""
    at = time.time() if charged_at is None else charged_at
    record: dict[str, Any] = {
        "charged_at": at,
        "amount": amount,
        "currency": currency,
        "transaction_id": transaction_id,
        "episode_key": idempotency_key,
        "session_id": session_id,
    }
    args = (orjson.dumps(record), at, ttl_seconds)
    written = await _RECORD(redis, [keys.recharge(idempotency_key), keys.recharges], args)
    return bool(written)
