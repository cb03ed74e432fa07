"""Campaigns and their contacts in Redis: every state change is one Lua script.

A campaign moves draft -> starting -> running <-> paused -> done, or cancelled. A contact
moves pending -> dialing (the claim, before the request) -> calling -> answered, then
ends done | opted_out | busy | no_answer | failed | cancelled | not_called, or goes back
to pending as `retry` (busy, no answer) due `retry_after` later. Keys (prefix `rz`):

- `campaign:<id>`: the campaign (a hash: config, state, reason, session, budget, rate,
  live, reserved, spent, counters).
- `campaign:<id>:contact:<contact>`: one contact (phone, name, tz, metadata, state,
  attempts, n, call ids, digits, duration, cost, reason).
- `campaign:<id>:contacts` (all, by line), `:pending` (by due time; first dials by
  line), `:live` (claimed or on a call, by claim time), `:rate` (dials of the last
  minute), `:zones` (the contacts' time zones), `:dnc` (do-not-call numbers).
- `campaign:call:<call_id>`: `<campaign>|<contact>|<n>`, the campaign's own calls.
- `campaigns` (ids by creation), `campaigns:inflight` (claims with no call id yet),
  `campaigns:sessions` (session id -> campaign), `campaigns:optout` (SHA-1 of numbers
  that pressed the opt-out digit: no campaign calls them again).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from ringez_worker.agents.campaign.models import CampaignConfig, Contact
from ringez_worker.lua import Arg, LuaScript

IN_PROGRESS = ("dialing", "calling", "answered")
WAITING = ("pending", "retry")
FINAL = ("done", "opted_out", "busy", "no_answer", "failed", "cancelled", "not_called", "dnc")
# A dial's rate entry counts for this long while its request is in flight, so the
# per-minute limit holds for the calls Ringez creates, not only for the claims.
IN_FLIGHT_HOLD_MS = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class CampaignKeys:
    prefix: str = "rz"

    def campaign(self, cid: str) -> str:
        return f"{self.prefix}:campaign:{cid}"

    def contact_prefix(self, cid: str) -> str:
        return f"{self.prefix}:campaign:{cid}:contact:"

    def contact(self, cid: str, contact: str) -> str:
        return self.contact_prefix(cid) + contact

    def contacts(self, cid: str) -> str:
        return f"{self.prefix}:campaign:{cid}:contacts"

    def pending(self, cid: str) -> str:
        return f"{self.prefix}:campaign:{cid}:pending"

    def live(self, cid: str) -> str:
        return f"{self.prefix}:campaign:{cid}:live"

    def rate(self, cid: str) -> str:
        return f"{self.prefix}:campaign:{cid}:rate"

    def zones(self, cid: str) -> str:
        return f"{self.prefix}:campaign:{cid}:zones"

    def dnc(self, cid: str) -> str:
        return f"{self.prefix}:campaign:{cid}:dnc"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}:campaign:call:{call_id}"

    @property
    def all(self) -> str:
        return f"{self.prefix}:campaigns"

    @property
    def inflight(self) -> str:
        return f"{self.prefix}:campaigns:inflight"

    @property
    def sessions(self) -> str:
        return f"{self.prefix}:campaigns:sessions"

    @property
    def optout(self) -> str:
        return f"{self.prefix}:campaigns:optout"


def optout_digest(phone: str) -> str:
    """What the opt-out set keeps of a number (the same as Lua's redis.sha1hex)."""
    return hashlib.sha1(phone.encode()).hexdigest()


# KEYS: campaign. ARGV: from states (comma list), to state, reason, now ms. One campaign
# transition; returns the state before ("" if there is no campaign).
_MOVE = LuaScript(
    """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return '' end
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == st then
    redis.call('HSET', KEYS[1], 'state', ARGV[2], 'reason', ARGV[3], 'updated_ms', ARGV[4])
    if ARGV[2] == 'done' or ARGV[2] == 'cancelled' then
      redis.call('HSET', KEYS[1], 'ended_ms', ARGV[4])
    end
    return st
  end
end
return st
"""
)

# KEYS: campaign, sessions. ARGV: session id, now ms, campaign id. starting|opening ->
# running with its session; 1 if this caller did it.
_OPENED = LuaScript(
    """
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'opening' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'session_id', ARGV[1], 'started_ms', ARGV[2],
  'updated_ms', ARGV[2], 'reason', '')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""
)

# KEYS: campaign. ARGV: now ms, stale ms. The claim on opening the session: 1 for the
# caller that moves starting -> opening (or takes over an opening left stale by a crash).
_OPEN = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'opening_ms')
local stale_at = tonumber(st[2] or '0') + tonumber(ARGV[2])
if st[1] == 'starting' or (st[1] == 'opening' and stale_at < tonumber(ARGV[1])) then
  redis.call('HSET', KEYS[1], 'state', 'opening', 'opening_ms', ARGV[1])
  return 0
end
if st[1] == 'opening' then
  return stale_at - tonumber(ARGV[1]) + 1
end
return -1
"""
)

# KEYS: campaign, pending, live, rate, inflight, optout, dnc. ARGV: now ms, contact key
# prefix, closed zones (JSON list), how many due contacts to look at, campaign id, the
# rate hold ms. The next dial under every limit at once, so any number of workers
# together never pass them: the campaign running, fewer than max_concurrent live, fewer
# than calls_per_minute dials in the last minute, spent + reserved + this call's
# reservation within the budget, the contact's zone open. The claim is made in the same
# step: attempt n, the slot, the reservation, the rate entry.
# Returns {'dial', contact, n} or {why[, wait ms]}.
_NEXT = LuaScript(
    """
local now = tonumber(ARGV[1])
local c = redis.call('HMGET', KEYS[1], 'state', 'live', 'max_concurrent', 'cpm', 'budget',
  'spent', 'reserved', 'rate', 'max_minutes', 'default_tz')
if c[1] ~= 'running' then return {'stopped'} end
if tonumber(c[2] or '0') >= tonumber(c[3]) then return {'full'} end
local cpm = tonumber(c[4] or '0')
if cpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[4]) >= cpm then
    local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    return {'rate', tostring(math.max(50, tonumber(oldest[2]) + 60000 - now))}
  end
end
local reserve = tonumber(c[8]) * tonumber(c[9])
if tonumber(c[6] or '0') + tonumber(c[7] or '0') + reserve > tonumber(c[5]) + 1e-9 then
  return {'budget'}
end
local closed = {}
for _, z in ipairs(cjson.decode(ARGV[3])) do closed[z] = true end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  local k = ARGV[2] .. id
  local f = redis.call('HMGET', k, 'state', 'tz', 'phone')
  if f[1] ~= 'pending' and f[1] ~= 'retry' then
    redis.call('ZREM', KEYS[2], id)
  elseif redis.call('SISMEMBER', KEYS[6], redis.sha1hex(f[3])) == 1
      or redis.call('SISMEMBER', KEYS[7], f[3]) == 1 then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HSET', k, 'state', 'dnc', 'reason', 'opted out or on the do-not-call list',
      'ended_ms', now)
  elseif not closed[(f[2] ~= '' and f[2]) or c[10]] then
    local n = redis.call('HINCRBY', k, 'attempts', 1)
    redis.call('HSET', k, 'state', 'dialing', 'n', n, 'dial_ms', now, 'reserved', reserve)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[3], now, id)
    redis.call('HINCRBY', KEYS[1], 'live', 1)
    redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', reserve)
    if cpm > 0 then redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), id .. ':' .. n) end
    redis.call('ZADD', KEYS[5], now, ARGV[5] .. '|' .. id)
    return {'dial', id, n}
  end
end
if #ids > 0 then return {'closed'} end
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {'empty'} end
return {'later', tostring(math.max(50, tonumber(nxt[2]) - now))}
"""
)

# KEYS: contact, call map, inflight, rate, campaign. ARGV: n, call id, now ms, map ttl,
# inflight member, rate member, map value, estimated rate ("" if none). The dial's answer
# written down once: the call is the campaign's own from here on.
_DIALED = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'n', 'calls')
if st[1] ~= 'dialing' or st[2] ~= ARGV[1] then return 0 end
local calls = st[3]
if calls and calls ~= '' then calls = calls .. ',' .. ARGV[2] else calls = ARGV[2] end
redis.call('HSET', KEYS[1], 'state', 'calling', 'call_id', ARGV[2], 'called_ms', ARGV[3],
  'calls', calls)
redis.call('SET', KEYS[2], ARGV[7], 'EX', ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[5])
if redis.call('ZSCORE', KEYS[4], ARGV[6]) then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[6]) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[5], 'rate', ARGV[8]) end
redis.call('HINCRBY', KEYS[5], 'dialed', 1)
return 1
"""
)

# KEYS: contact, campaign. ARGV: call id, now ms. calling -> answered; 1 if this caller.
_ANSWERED = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'call_id')
if st[1] ~= 'calling' or st[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'answered', 'answered_ms', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'answered', 1)
return 1
"""
)

# KEYS: contact, live, pending, inflight, rate, campaign. ARGV: n, contact id, inflight
# member, rate member. A claim whose request Ringez refused with 402 (nothing was
# created): the contact goes back to the front, its slot and reservation are freed.
_UNCLAIM = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'n', 'reserved')
if st[1] ~= 'dialing' or st[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'pending')
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('ZREM', KEYS[5], ARGV[4])
if tonumber(redis.call('HINCRBY', KEYS[6], 'live', -1)) < 0 then
  redis.call('HSET', KEYS[6], 'live', 0)
end
redis.call('HINCRBYFLOAT', KEYS[6], 'reserved', -tonumber(st[3] or '0'))
return 1
"""
)

# KEYS: contact, campaign, live, pending, inflight, optout. ARGV: contact id, call id ("":
# a dial that failed before any call), status (completed | busy | no-answer | failed),
# duration s, cost, now ms, retry due ms, max attempts, reason, inflight member, opt-out
# digit. Frees the slot and the reservation once (the state check makes a redelivery do
# nothing), adds the real cost, then ends the contact or puts it up for a retry.
# Returns the contact's new state, or "".
_FINISH = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'call_id', 'attempts', 'reserved',
  'digits', 'phone', 'cost')
if ARGV[2] == '' then
  if st[1] ~= 'dialing' then return '' end
elseif st[2] ~= ARGV[2] or (st[1] ~= 'calling' and st[1] ~= 'answered') then
  return ''
end
if tonumber(redis.call('HINCRBY', KEYS[2], 'live', -1)) < 0 then
  redis.call('HSET', KEYS[2], 'live', 0)
end
redis.call('HINCRBYFLOAT', KEYS[2], 'reserved', -tonumber(st[4] or '0'))
local cost = tonumber(ARGV[5]) or 0
if cost > 0 then redis.call('HINCRBYFLOAT', KEYS[2], 'spent', cost) end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[10])
local status = ARGV[3]
local state
local reason = ARGV[9]
local talked = st[1] == 'answered'
if st[1] == 'calling' and status == 'completed' and (tonumber(ARGV[4]) or 0) > 0
    and cost > 0 then
  -- Answered, though its call.answered was never handled (it talked and was billed):
  -- not a no-answer to call again.
  talked = true
  if reason == '' then reason = 'answered; message not played' end
end
if talked then
  if ARGV[11] ~= '' and st[5] and string.sub(st[5], 1, 1) == ARGV[11] then
    state = 'opted_out'
    redis.call('SADD', KEYS[6], redis.sha1hex(st[6]))
  else
    state = 'done'
  end
  redis.call('HINCRBY', KEYS[2], 'completed', 1)
else
  if status == 'completed' then status = 'no-answer' end
  if status == 'busy' or status == 'no-answer' then
    if tonumber(st[3] or '0') < tonumber(ARGV[8]) then
      state = 'retry'
    else
      state = string.gsub(status, '-', '_')
    end
  else
    state = 'failed'
  end
  redis.call('HINCRBY', KEYS[2], 'failed', 1)
end
redis.call('HSET', KEYS[1], 'state', state, 'last_status', status, 'reason', reason,
  'cost', tostring((tonumber(st[7] or '0') or 0) + cost), 'ended_ms', ARGV[6],
  'reserved', 0)
if talked then redis.call('HSET', KEYS[1], 'duration', ARGV[4]) end
if state == 'retry' then redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1]) end
return state
"""
)

# KEYS: campaign, pending. ARGV: now ms, contact key prefix, "budget" or "". A running
# campaign with nothing live and nothing pending is done; with "budget", one whose next
# call does not fit the budget and nothing live is done too, and the contacts not yet
# called are `not_called`. Returns 1 if this caller ended it.
_SETTLE = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'live')
if st[1] ~= 'running' or tonumber(st[2] or '0') > 0 then return 0 end
local left = redis.call('ZCARD', KEYS[2])
if left > 0 and ARGV[3] ~= 'budget' then return 0 end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  redis.call('HSET', ARGV[2] .. id, 'state', 'not_called', 'reason', 'budget reached',
    'ended_ms', ARGV[1])
end
redis.call('DEL', KEYS[2])
local why = ''
if left > 0 then why = 'budget reached' end
redis.call('HSET', KEYS[1], 'state', 'done', 'reason', why, 'ended_ms', ARGV[1],
  'updated_ms', ARGV[1])
return 1
"""
)

# KEYS: campaign, pending. ARGV: now ms, contact key prefix, reason. Cancel: no more
# dials; the contacts still waiting end `cancelled` (live calls finish). Returns the
# state before.
_CANCEL = LuaScript(
    """
local st = redis.call('HGET', KEYS[1], 'state')
if not st or st == 'done' or st == 'cancelled' then return st or '' end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  redis.call('HSET', ARGV[2] .. id, 'state', 'cancelled', 'reason', ARGV[3], 'ended_ms', ARGV[1])
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'reason', ARGV[3], 'ended_ms', ARGV[1],
  'updated_ms', ARGV[1])
return st
"""
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


class CampaignStore:
    """The scripts above, bound to one Redis and key prefix."""

    def __init__(self, redis: Redis, prefix: str = "rz") -> None:
        self.redis = redis
        self.keys = CampaignKeys(prefix)

    async def create(
        self,
        cid: str,
        config: CampaignConfig,
        contacts: list[Contact],
        dnc: frozenset[str],
        rate_estimate: float,
        now_ms: int,
    ) -> None:
        """Store a new campaign (`draft`) with its contacts, in one transaction."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                k.campaign(cid),
                mapping={
                    "config": orjson.dumps(config.model_dump()),
                    "name": config.name,
                    "state": "draft",
                    "reason": "",
                    "created_ms": now_ms,
                    "updated_ms": now_ms,
                    "budget": config.budget,
                    "currency": config.currency,
                    "max_concurrent": config.max_concurrent,
                    "cpm": config.calls_per_minute,
                    "max_minutes": config.max_minutes,
                    "rate": rate_estimate,
                    "default_tz": config.timezone,
                    "total": len(contacts),
                    "live": 0,
                    "reserved": 0,
                    "spent": 0,
                    "dialed": 0,
                    "answered": 0,
                    "completed": 0,
                    "failed": 0,
                },
            )
            for c in contacts:
                pipe.hset(
                    k.contact(cid, c.id),
                    mapping={
                        "phone": c.phone,
                        "name": c.name,
                        "tz": c.timezone,
                        "line": c.line,
                        "metadata": orjson.dumps(c.metadata),
                        "state": "pending",
                        "attempts": 0,
                    },
                )
            if contacts:
                pipe.zadd(k.contacts(cid), {c.id: c.line for c in contacts})
                pipe.zadd(k.pending(cid), {c.id: c.line for c in contacts})
            zones = {c.timezone or config.timezone for c in contacts} or {config.timezone}
            pipe.sadd(k.zones(cid), *zones)
            if dnc:
                pipe.sadd(k.dnc(cid), *dnc)
            pipe.zadd(k.all, {cid: now_ms})
            await pipe.execute()

    async def move(self, cid: str, frm: tuple[str, ...], to: str, reason: str, now_ms: int) -> str:
        args: list[Arg] = [",".join(frm), to, reason, now_ms]
        return _text(await _MOVE(self.redis, [self.keys.campaign(cid)], args))

    async def claim_open(self, cid: str, now_ms: int, stale_ms: int) -> int:
        """0: this worker opens the session now. > 0: another worker holds the opening,
        ms until its claim goes stale. < 0: nothing to open (the state moved on)."""
        return int(await _OPEN(self.redis, [self.keys.campaign(cid)], [now_ms, stale_ms]))

    async def opened(self, cid: str, session_id: str, now_ms: int) -> bool:
        keys = [self.keys.campaign(cid), self.keys.sessions]
        return bool(await _OPENED(self.redis, keys, [session_id, now_ms, cid]))

    async def next_dial(
        self, cid: str, now_ms: int, closed: list[str], scan: int = 200
    ) -> tuple[str, ...]:
        k = self.keys
        keys = [
            k.campaign(cid),
            k.pending(cid),
            k.live(cid),
            k.rate(cid),
            k.inflight,
            k.optout,
            k.dnc(cid),
        ]
        args: list[Arg] = [
            now_ms,
            k.contact_prefix(cid),
            orjson.dumps(closed),
            scan,
            cid,
            IN_FLIGHT_HOLD_MS,
        ]
        return tuple(_text(v) for v in await _NEXT(self.redis, keys, args))

    async def dialed(
        self,
        cid: str,
        contact: str,
        n: int,
        call_id: str,
        rate: float | None,
        now_ms: int,
        ttl: int,
    ) -> bool:
        k = self.keys
        keys = [k.contact(cid, contact), k.call(call_id), k.inflight, k.rate(cid), k.campaign(cid)]
        args: list[Arg] = [
            n,
            call_id,
            now_ms,
            ttl,
            f"{cid}|{contact}",
            f"{contact}:{n}",
            f"{cid}|{contact}|{n}",
            "" if rate is None else rate,
        ]
        return bool(await _DIALED(self.redis, keys, args))

    async def answered(self, cid: str, contact: str, call_id: str, now_ms: int) -> bool:
        keys = [self.keys.contact(cid, contact), self.keys.campaign(cid)]
        return bool(await _ANSWERED(self.redis, keys, [call_id, now_ms]))

    async def unclaim(self, cid: str, contact: str, n: int) -> bool:
        k = self.keys
        keys = [
            k.contact(cid, contact),
            k.live(cid),
            k.pending(cid),
            k.inflight,
            k.rate(cid),
            k.campaign(cid),
        ]
        args: list[Arg] = [n, contact, f"{cid}|{contact}", f"{contact}:{n}"]
        return bool(await _UNCLAIM(self.redis, keys, args))

    async def finish(
        self,
        cid: str,
        contact: str,
        call_id: str,
        status: str,
        *,
        duration: float,
        cost: float,
        now_ms: int,
        retry_due_ms: int,
        max_attempts: int,
        reason: str,
        opt_out_digit: str | None,
    ) -> str:
        k = self.keys
        keys = [
            k.contact(cid, contact),
            k.campaign(cid),
            k.live(cid),
            k.pending(cid),
            k.inflight,
            k.optout,
        ]
        args: list[Arg] = [
            contact,
            call_id,
            status,
            duration,
            cost,
            now_ms,
            retry_due_ms,
            max_attempts,
            reason,
            f"{cid}|{contact}",
            opt_out_digit or "",
        ]
        return _text(await _FINISH(self.redis, keys, args))

    async def settle(self, cid: str, now_ms: int, budget: bool = False) -> bool:
        k = self.keys
        keys = [k.campaign(cid), k.pending(cid)]
        args: list[Arg] = [now_ms, k.contact_prefix(cid), "budget" if budget else ""]
        return bool(await _SETTLE(self.redis, keys, args))

    async def cancel(self, cid: str, now_ms: int, reason: str = "cancelled") -> str:
        k = self.keys
        keys = [k.campaign(cid), k.pending(cid)]
        return _text(await _CANCEL(self.redis, keys, [now_ms, k.contact_prefix(cid), reason]))

    async def expire(self, cid: str, ttl: int, now_ms: int) -> None:
        """An ended campaign's keys, its contacts' included, kept `ttl` seconds more."""
        k = self.keys
        ids = [_text(i) for i in await self.redis.zrange(k.contacts(cid), 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(k.campaign(cid), "expires_ms", str(now_ms + ttl * 1000))
            for name in (k.campaign(cid), k.contacts(cid), k.pending(cid), k.live(cid)):
                pipe.expire(name, ttl)
            for name in (k.rate(cid), k.zones(cid), k.dnc(cid)):
                pipe.expire(name, ttl)
            for contact in ids:
                pipe.expire(k.contact(cid, contact), ttl)
            await pipe.execute()

    async def get(self, cid: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.campaign(cid))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        return _hash(raw) or None

    async def config(self, cid: str) -> CampaignConfig | None:
        raw = await self.redis.hget(self.keys.campaign(cid), "config")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        return None if raw is None else CampaignConfig.model_validate_json(raw)

    async def contact(self, cid: str, contact: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.contact(cid, contact))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        return _hash(raw) or None

    async def contacts(self, cid: str) -> list[tuple[str, dict[str, str]]]:
        """Every contact of a campaign, in file order."""
        ids = [_text(i) for i in await self.redis.zrange(self.keys.contacts(cid), 0, -1)]
        found: list[tuple[str, dict[str, str]]] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            async with self.redis.pipeline(transaction=False) as pipe:
                for contact in chunk:
                    pipe.hgetall(self.keys.contact(cid, contact))
                rows = await pipe.execute()
            found += [(c, _hash(r)) for c, r in zip(chunk, rows, strict=True) if r]
        return found

    async def of_call(self, call_id: str) -> tuple[str, str, int] | None:
        """(campaign, contact, attempt) of one of the campaigns' own calls."""
        raw = await self.redis.get(self.keys.call(call_id))
        if raw is None:
            return None
        cid, contact, n = _text(raw).split("|")
        return cid, contact, int(n)

    async def ids(self) -> list[str]:
        return [_text(i) for i in await self.redis.zrange(self.keys.all, 0, -1)]
