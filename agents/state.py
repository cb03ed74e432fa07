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


# Lua functions (prepended to a script) that fold the quality monitor's per-call record
# into the support agent's call summary. Both agents write through scripts that end in
# `with_quality`, so whichever finishes last merges, with no race: the summary written
# after the last poll reads the record, a poll or an action after the summary rewrites
# it. The summary is JSON from orjson with "quality" always its last field, spliced here
# as text: re-encoding the whole summary with cjson would turn its empty lists into {}.
# (`,"quality":` cannot occur inside a JSON string, whose quotes are escaped.)
QUALITY_IN_SUMMARY = """
local function quality_json(k)
  local raw = redis.call('HGETALL', k)
  if #raw == 0 then return nil end
  local q, breaches, sum, n = {}, {}, nil, nil
  for i = 1, #raw, 2 do
    local f, v = raw[i], raw[i + 1]
    if string.sub(f, 1, 7) == 'breach:' then breaches[string.sub(f, 8)] = v
    elseif f == 'mos_sum' then sum = tonumber(v)
    elseif f == 'mos_samples' then n = tonumber(v)
    else q[f] = tonumber(v) or v end
  end
  if sum and n and n > 0 then q['mos_mean'] = math.floor(sum / n * 1000 + 0.5) / 1000 end
  q['breaches'] = breaches
  return cjson.encode(q)
end
local function with_quality(summary, k)
  local cut, from = nil, 1
  while true do
    local at = string.find(summary, ',"quality":', from, true)
    if not at then break end
    cut, from = at, at + 1
  end
  if cut then summary = string.sub(summary, 1, cut - 1) .. '}' end
  local q = quality_json(k)
  if not q then return summary end
  if summary == '{}' then return '{"quality":' .. q .. '}' end
  return string.sub(summary, 1, -2) .. ',"quality":' .. q .. '}'
end
local function merge_into_summary(summary_key, record_key)
  local s = redis.call('GET', summary_key)
  if s then redis.call('SET', summary_key, with_quality(s, record_key), 'KEEPTTL') end
end
"""

# KEYS: the summary, the quality record. ARGV: the summary's JSON, its TTL.
_WRITE_SUMMARY = LuaScript(
    QUALITY_IN_SUMMARY
    + """
redis.call('SET', KEYS[1], with_quality(ARGV[1], KEYS[2]), 'EX', ARGV[2])
return 1
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


def write_summary(redis: Any, keys: CallKeys, summary_json: bytes, ttl: int) -> Any:
    """Write the call summary, with the quality record folded in as its "quality" field
    when the monitor kept one (`redis` may be a pipeline)."""
    return _WRITE_SUMMARY(redis, [keys.summary, keys.quality("record")], [summary_json, ttl])


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
