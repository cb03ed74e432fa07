"""The callback queue and the roster in Redis: every state change is one Lua script.

A request moves new -> queued -> assigned -> dialing -> calling -> live -> done, or back
to queued through `retry` (keeping its priority and original age), or ends failed or
cancelled. Keys (under the prefix, default `rz`):

- `callback:<id>`: the request (a hash: body, state, priority, tries, agent, n, call_id,
  reason, times); kept `CALLBACK_RECORD_TTL_SECONDS` once it ends.
- `callbacks:new` / `callbacks:queue` / `callbacks:retry` / `callbacks:assigned`: sorted
  sets of ids (by arrival, by priority then age, by due time, by assignment time).
- `callbacks:roster` (agent id -> JSON) with `callbacks:roster:version`, and
  `callbacks:load` (agent id -> live calls): the load survives a roster reload.
- `callback:call:<call_id>`: which request a call belongs to (the service's own calls).
- `callbacks:idem:<key>`: an Idempotency-Key's request id and body hash (24 h).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ringez_worker.lua import Arg, LuaScript
from ringez_worker.redis_conn import NotReplicated

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
WAITING = ("new", "queued", "retry")
FINAL = ("done", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class CallbackKeys:
    prefix: str = "rz"

    def request(self, request_id: str) -> str:
        return f"{self.prefix}:callback:{request_id}"

    @property
    def request_prefix(self) -> str:
        return f"{self.prefix}:callback:"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}:callback:call:{call_id}"

    def idempotency(self, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self.prefix}:callbacks:idem:{digest}"

    def _set(self, name: str) -> str:
        return f"{self.prefix}:callbacks:{name}"

    @property
    def new(self) -> str:
        return self._set("new")

    @property
    def queue(self) -> str:
        return self._set("queue")

    @property
    def retry(self) -> str:
        return self._set("retry")

    @property
    def assigned(self) -> str:
        return self._set("assigned")

    @property
    def roster(self) -> str:
        return self._set("roster")

    @property
    def roster_version(self) -> str:
        return self._set("roster:version")

    @property
    def load(self) -> str:
        return self._set("load")

    @property
    def sweep(self) -> str:
        """Set while a sweep pass is queued (at most one)."""
        return self._set("sweep")


def queue_score(priority: int, created_ms: int) -> int:
    """Higher priority first, then older first; exact in a double (below 2**53)."""
    return (200 - max(0, min(priority, 199))) * 10**13 + created_ms


# KEYS: request, new[, idempotency]. ARGV: id, body, body hash, now ms, idem ttl, skill,
# language. Returns {id, "new"|"same"|"conflict"}.
_ADD = LuaScript(
    """
if KEYS[3] then
  local got = redis.call('GET', KEYS[3])
  if got then
    local sep = string.find(got, '|', 1, true)
    local id = string.sub(got, 1, sep - 1)
    if string.sub(got, sep + 1) == ARGV[3] then return {id, 'same'} end
    return {id, 'conflict'}
  end
end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'state', 'new', 'created_ms', ARGV[4],
  'updated_ms', ARGV[4], 'tries', 0, 'skill', ARGV[6], 'language', ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[1] .. '|' .. ARGV[3], 'EX', ARGV[5]) end
return {ARGV[1], 'new'}
"""
)

# KEYS: request, new, queue. ARGV: id, priority, score, now ms. Idempotent: only a `new`
# request is queued (two passes may take in the same one).
_QUEUE = LuaScript(
    """
if redis.call('HGET', KEYS[1], 'state') ~= 'new' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'priority', ARGV[2], 'score', ARGV[3],
  'updated_ms', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""
)

# KEYS: queue, roster, load, assigned. ARGV: request key prefix, now ms, how many queued
# requests to look at. The highest-priority request an available agent with its skill,
# language and a free slot can take goes to the least loaded such agent (ties: agent id),
# in one step: nothing is assigned twice and no agent goes over its maximum. A request
# nobody can take now is stepped over, not waited on. Returns {id, agent, n} or {}.
_ASSIGN = LuaScript(
    """
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
if #ids == 0 then return {} end
local raw = redis.call('HGETALL', KEYS[2])
local agents = {}
for i = 1, #raw, 2 do
  local a = cjson.decode(raw[i + 1])
  a.load = tonumber(redis.call('HGET', KEYS[3], raw[i]) or '0')
  agents[#agents + 1] = a
end
table.sort(agents, function(x, y) return x.id < y.id end)
local function has(list, value)
  for _, v in ipairs(list) do if v == value then return true end end
  return false
end
for _, id in ipairs(ids) do
  local k = ARGV[1] .. id
  local want = redis.call('HMGET', k, 'skill', 'language', 'state')
  if want[3] ~= 'queued' then
    redis.call('ZREM', KEYS[1], id)
  else
    local best = nil
    for _, a in ipairs(agents) do
      if a.available and a.load < a.max_concurrent and has(a.skills, want[1])
          and has(a.languages, want[2]) and (best == nil or a.load < best.load) then
        best = a
      end
    end
    if best then
      local n = redis.call('HINCRBY', k, 'tries', 1)
      redis.call('HSET', k, 'state', 'assigned', 'agent', best.id, 'agent_number',
        best.number, 'n', n, 'updated_ms', ARGV[2])
      redis.call('HINCRBY', KEYS[3], best.id, 1)
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', KEYS[4], ARGV[2], id)
      return {id, best.id, n}
    end
  end
end
return {}
"""
)

# KEYS: request. ARGV: assignment n, now ms. The claim before the dial: 1 for the caller
# that moves it to `dialing`, 2 when it is already dialing (a retry after a crash: the
# same idempotency key is sent again), 0 when this assignment is over.
_DIAL = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'n')
if st[2] ~= ARGV[1] then return 0 end
if st[1] == 'assigned' then
  redis.call('HSET', KEYS[1], 'state', 'dialing', 'dial_ms', ARGV[2], 'updated_ms', ARGV[2])
  return 1
end
if st[1] == 'dialing' then return 2 end
return 0
"""
)

# KEYS: request, assigned, call map. ARGV: id, n, call id, now ms, map ttl.
_DIALED = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'n')
if st[1] ~= 'dialing' or st[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'calling', 'call_id', ARGV[3], 'updated_ms', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[5])
return 1
"""
)

# KEYS: request, call map. ARGV: call id, from state, to state, now ms. One step of a
# live call (calling -> transferring -> live); 1 if this caller made it.
_STEP = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'call_id')
if st[2] ~= ARGV[1] or st[1] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'updated_ms', ARGV[4])
return 1
"""
)

# KEYS: request, load, retry, assigned. ARGV: id, call id (or "" for a dial that
# failed), outcome (done | failed), reason, now ms, retry due ms, max tries, record ttl.
# Frees the agent's slot once (the state check makes a redelivery do nothing), then
# ends the request or puts it up for a retry. Returns the new state, or "" if nothing.
_FINISH = LuaScript(
    """
local st = redis.call('HMGET', KEYS[1], 'state', 'call_id', 'agent', 'tries')
local live = {calling = true, transferring = true, live = true}
if ARGV[2] == '' then
  if st[1] ~= 'dialing' and st[1] ~= 'assigned' then return '' end
elseif st[2] ~= ARGV[2] or not live[st[1]] then
  return ''
end
if st[3] and tonumber(redis.call('HINCRBY', KEYS[2], st[3], -1)) < 0 then
  redis.call('HSET', KEYS[2], st[3], 0)
end
redis.call('ZREM', KEYS[4], ARGV[1])
local state = ARGV[3]
if state ~= 'done' and tonumber(st[4] or '0') < tonumber(ARGV[7]) then state = 'retry' end
redis.call('HSET', KEYS[1], 'state', state, 'reason', ARGV[4], 'updated_ms', ARGV[5])
if state == 'retry' then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[8])
end
return state
"""
)

# KEYS: retry, queue. ARGV: now ms, request key prefix. Due retries go back into the
# queue with their first score: the same priority and original age.
_DUE = LuaScript(
    """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
for _, id in ipairs(ids) do
  local k = ARGV[2] .. id
  redis.call('ZREM', KEYS[1], id)
  if redis.call('HGET', k, 'state') == 'retry' then
    redis.call('HSET', k, 'state', 'queued', 'updated_ms', ARGV[1])
    redis.call('ZADD', KEYS[2], redis.call('HGET', k, 'score'), id)
  end
end
return #ids
"""
)

# KEYS: request, new, queue, retry. ARGV: id, now ms, record ttl. Only a waiting request
# can be cancelled; returns its state before (a live call is not cut off).
_CANCEL = LuaScript(
    """
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'new' or st == 'queued' or st == 'retry' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'reason', 'cancelled', 'updated_ms', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return st or ''
"""
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CallbackStore:
    """The scripts above, bound to one Redis and key prefix."""

    def __init__(self, redis: Redis, prefix: str = "rz") -> None:
        self.redis = redis
        self.keys = CallbackKeys(prefix)

    async def add(
        self,
        request_id: str,
        body: bytes,
        skill: str,
        language: str,
        idem: str | None,
        now_ms: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> tuple[str, str]:
        """Store a new request (state `new`); (id, "new" | "same" | "conflict").

        `wait_replicas` (REDIS_WAIT_REPLICAS): WAIT for that many replicas on the same
        connection, in the same round trip; NotReplicated when fewer confirm in time."""
        k = self.keys
        keys = [k.request(request_id), k.new] + ([k.idempotency(idem)] if idem else [])
        digest = hashlib.sha256(body).hexdigest()
        args: list[Arg] = [
            request_id,
            body,
            digest,
            now_ms,
            IDEMPOTENCY_TTL_SECONDS,
            skill,
            language,
        ]
        if not wait_replicas:
            rid, verdict = await _ADD(self.redis, keys, args)
            return _text(rid), _text(verdict)
        # WAIT counts this connection's writes: one pipeline keeps both on one connection.
        async with self.redis.pipeline(transaction=False) as pipe:
            _ADD(pipe, keys, args)
            pipe.execute_command("WAIT", wait_replicas, wait_timeout_ms)
            (rid, verdict), acked = await pipe.execute()
        if int(acked) < wait_replicas:
            raise NotReplicated(f"{acked} of {wait_replicas} replicas confirmed the request")
        return _text(rid), _text(verdict)

    async def queue(self, request_id: str, priority: int, created_ms: int, now_ms: int) -> bool:
        k = self.keys
        score = queue_score(priority, created_ms)
        keys = [k.request(request_id), k.new, k.queue]
        return bool(await _QUEUE(self.redis, keys, [request_id, priority, score, now_ms]))

    async def assign(self, now_ms: int, scan: int = 200) -> tuple[str, str, int] | None:
        k = self.keys
        keys = [k.queue, k.roster, k.load, k.assigned]
        got = await _ASSIGN(self.redis, keys, [k.request_prefix, now_ms, scan])
        if not got:
            return None
        return _text(got[0]), _text(got[1]), int(got[2])

    async def claim_dial(self, request_id: str, n: int, now_ms: int) -> int:
        return int(await _DIAL(self.redis, [self.keys.request(request_id)], [n, now_ms]))

    async def dialed(self, request_id: str, n: int, call_id: str, now_ms: int, ttl: int) -> bool:
        k = self.keys
        keys = [k.request(request_id), k.assigned, k.call(call_id)]
        return bool(await _DIALED(self.redis, keys, [request_id, n, call_id, now_ms, ttl]))

    async def step(self, request_id: str, call_id: str, frm: str, to: str, now_ms: int) -> bool:
        keys = [self.keys.request(request_id)]
        return bool(await _STEP(self.redis, keys, [call_id, frm, to, now_ms]))

    async def finish(
        self,
        request_id: str,
        call_id: str,
        outcome: str,
        reason: str,
        now_ms: int,
        retry_due_ms: int,
        max_tries: int,
        ttl: int,
    ) -> str:
        k = self.keys
        keys = [k.request(request_id), k.load, k.retry, k.assigned]
        args: list[Arg] = [
            request_id,
            call_id,
            outcome,
            reason,
            now_ms,
            retry_due_ms,
            max_tries,
            ttl,
        ]
        return _text(await _FINISH(self.redis, keys, args))

    async def move_due(self, now_ms: int) -> int:
        k = self.keys
        return int(await _DUE(self.redis, [k.retry, k.queue], [now_ms, k.request_prefix]))

    async def cancel(self, request_id: str, now_ms: int, ttl: int) -> str:
        k = self.keys
        keys = [k.request(request_id), k.new, k.queue, k.retry]
        return _text(await _CANCEL(self.redis, keys, [request_id, now_ms, ttl]))

    async def get(self, request_id: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(self.keys.request(request_id))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        return {_text(a): _text(b) for a, b in raw.items()} or None

    async def request_of_call(self, call_id: str) -> str | None:
        raw = await self.redis.get(self.keys.call(call_id))
        return None if raw is None else _text(raw)
