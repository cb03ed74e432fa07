"""Per-call state the agents keep in Redis, under one prefix, each key with a TTL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ringez_worker.lua import LuaScript

# The call statuses (ringez-api.md, GET /calls/{id}) after which nothing can be done on a
# call: no transfer, no quality check.
ENDED_STATUSES = frozenset({"completed", "failed", "busy", "no-answer", "canceled"})

# KEYS: the list, the call's record of appends made. ARGV: this append's name (what and
# which delivery), the value, the TTL, how many entries to keep (0: all).
# A retry of the same delivery finds its name recorded and appends nothing: one atomic
# step, so no crash between the append and the record can make it twice. Returns the
# 1-based position the value went in at (before any trim).
_APPEND_ONCE = LuaScript(
    """
local at = redis.call('HGET', KEYS[2], ARGV[1])
if not at then
  at = redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], at)
  local keep = tonumber(ARGV[4])
  if keep > 0 then redis.call('LTRIM', KEYS[1], -keep, -1) end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return tonumber(at)
"""
)
# KEYS: an untrimmed list, the appends record. ARGV: our append's name, how many.
# The last `n` entries before our own (all of them if we have not appended yet), so a
# retry sees the same context as the first attempt did.
_BEFORE_OWN = LuaScript(
    """
local n = tonumber(ARGV[2])
local at = redis.call('HGET', KEYS[2], ARGV[1])
if not at then return redis.call('LRANGE', KEYS[1], -n, -1) end
at = tonumber(at)
if at <= 1 then return {} end
return redis.call('LRANGE', KEYS[1], math.max(0, at - 1 - n), at - 2)
"""
)


@dataclass(frozen=True, slots=True)
class CallKeys:
    prefix: str
    call_id: str

    def _k(self, name: str) -> str:
        return f"{self.prefix}:call:{self.call_id}:{name}"

    @property
    def segments(self) -> str:
        return self._k("segments")

    @property
    def live(self) -> str:
        return self._k("live")

    @property
    def intents(self) -> str:
        return self._k("intents")

    @property
    def sentiments(self) -> str:
        return self._k("sentiments")

    @property
    def appended(self) -> str:
        """Which deliveries already appended to the lists above (see `append_once`)."""
        return self._k("appended")

    @property
    def opened(self) -> str:
        return self._k("opened")

    @property
    def ended(self) -> str:
        return self._k("ended")

    @property
    def escalation(self) -> str:
        return self._k("escalation")

    def quality(self, name: str) -> str:
        """The quality monitor's keys (agents/quality.py): started, ended, record, breach:*."""
        return self._k(f"quality:{name}")

    @property
    def summary(self) -> str:
        return f"{self.prefix}:summary:{self.call_id}"

    def live_state(self) -> list[str]:
        """What the support agent deletes when the call ends."""
        return [
            self.segments,
            self.live,
            self.intents,
            self.sentiments,
            self.appended,
            self.opened,
        ]


def append_once(
    redis: Any,
    keys: CallKeys,
    what: str,
    delivery_id: str,
    value: bytes | str | float,
    ttl: int,
    *,
    keep: int = 0,
) -> Any:
    """Append `value` to the call's `what` list once per delivery (retries append nothing).

    `redis` may be a pipeline; `what` is a list property of CallKeys ("segments", ...)."""
    return _APPEND_ONCE(
        redis, [getattr(keys, what), keys.appended], [f"{what}:{delivery_id}", value, ttl, keep]
    )


def before_own(redis: Any, keys: CallKeys, what: str, delivery_id: str, n: int) -> Any:
    """The last `n` entries of an untrimmed list that came before this delivery's own."""
    return _BEFORE_OWN(redis, [getattr(keys, what), keys.appended], [f"{what}:{delivery_id}", n])
