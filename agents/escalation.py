"""Escalation agent: transfers an unhappy caller to a human, at most once per call.

Watches the caller's final transcript segments (sentiment-analysis on each), and takes
hand-overs from the support agent. Before any transfer it takes a claim in Redis that
also checks the call has not ended. The claim moves `claimed` -> `sending` (just before
the transfer request) -> `transferred`/`skipped`/`uncertain`, each move made only by the
attempt that holds it, so redeliveries, retries and concurrent workers can never
transfer a call twice. An attempt that died while `claimed` sent nothing, so the retry
of the same handler on the same delivery takes its claim over; one that died while
`sending` may have transferred, so its retry records the delivery as failed for a
person to check. A call that ends while its claim is still `claimed` marks the claim
`skipped`: nothing was sent, and nothing can be now.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from ringez_worker.agents.config import AgentSettings
from ringez_worker.agents.phone import InvalidNumber, is_e164
from ringez_worker.agents.state import ENDED_STATUSES, CallKeys, append_once
from ringez_worker.api import Priority, RingezClient
from ringez_worker.handlers import Context, Event, Router, Superseded, TranscriptionUpdated
from ringez_worker.lua import LuaScript

# KEYS: claim, ended marker. ARGV: our claim, ttl, our owner (delivery id and source).
# Claim a call that has not ended and that nobody else holds; take over the claim of an
# earlier attempt by the same owner (the same handler on the same delivery) that died
# before sending anything.
_CLAIM = LuaScript(
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'ended' end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 'claimed' end
local held = cjson.decode(redis.call('GET', KEYS[1]))
if held['owner'] ~= ARGV[3] then return 'held' end
if held['state'] == 'claimed' then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 'taken_over'
end
return held['state']
"""
)
# KEYS: claim. ARGV: our attempt, the state we expect, the state to move to.
_MOVE = LuaScript(
    """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local claim = cjson.decode(v)
if claim['attempt'] ~= ARGV[1] then return 0 end
-- Already moved by this attempt: a resend after a lost reply.
if claim['state'] == ARGV[3] then return 1 end
if claim['state'] ~= ARGV[2] then return 0 end
claim['state'] = ARGV[3]
redis.call('SET', KEYS[1], cjson.encode(claim), 'KEEPTTL')
return 1
"""
)
# KEYS: claim. The call has ended: a claim still `claimed` (its attempt died before
# sending, or is between claim and send) can never send now; say so in the record
# instead of leaving it looking like a transfer in progress. A live attempt then finds
# its claim moved and stops (Superseded); `sending` and final states stay as they are.
_END_CLAIMED = LuaScript(
    """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local claim = cjson.decode(v)
if claim['state'] ~= 'claimed' then return 0 end
claim['state'] = 'skipped'
claim['why'] = 'call ended before the transfer was sent'
redis.call('SET', KEYS[1], cjson.encode(claim), 'KEEPTTL')
return 1
"""
)
# Release only our own claim.
_RELEASE = LuaScript(
    """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['attempt'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


class EscalationUncertain(Exception):
    """The transfer request may or may not have reached Ringez; a person must look."""

    retryable = False


class EscalationAgent:
    name = "escalation"

    def __init__(self, config: AgentSettings) -> None:
        self.config = config

    def register(self, router: Router) -> None:
        router.add(
            "transcription.updated", self.on_transcription, name="agents.escalation.sentiment"
        )
        router.add("call.completed", self.on_call_ended, name="agents.escalation.call_ended")
        router.add("call.failed", self.on_call_ended, name="agents.escalation.call_ended")

    async def on_call_ended(self, event: Event, ctx: Context) -> None:
        """Mark the call ended first thing, so no late segment can start a transfer."""
        keys = CallKeys(ctx.settings.key_prefix, event.call_id or "")
        await ctx.redis.set(keys.ended, event.event, ex=self.config.escalation_claim_ttl_seconds)
        # Seen in the CI chaos run: an attempt killed after claiming, its retry due after
        # the caller hung up, left the claim `claimed` for good.
        if await _END_CLAIMED(ctx.redis, [keys.escalation], []):
            ctx.log.info("escalation.skipped", why="call ended before the transfer was sent")

    async def on_transcription(self, event: TranscriptionUpdated, ctx: Context) -> None:
        data = event.data
        if not data.is_final or (data.speaker not in (None, "caller")) or not data.text.strip():
            return
        keys = CallKeys(ctx.settings.key_prefix, data.call_id)
        # Cheap check first: no sentiment calls once the call is escalated or over.
        ended, held = await ctx.redis.mget(keys.ended, keys.escalation)
        if ended or (held and orjson.loads(held).get("owner") != _owner(ctx, "sentiment")):
            return
        analysis = await ctx.ringez.agents.analyze_sentiment(
            call_id=data.call_id, transcript_segment=data.text, include_recommendations=True
        )
        score = float(analysis.sentiment_score or 0.0)
        # Once per delivery: the escalation below can fail and the retry analyses again.
        ttl = self.config.support_state_ttl_seconds
        await append_once(ctx.redis, keys, "sentiments", ctx.delivery_id, score, ttl)
        ctx.log.info(
            "escalation.sentiment",
            score=score,
            sentiment=analysis.sentiment,
            recommended=bool(analysis.escalation_recommended),
        )
        if score < self.config.escalation_sentiment_threshold:
            await self.escalate(event, ctx, reason=f"sentiment {score:.2f}", source="sentiment")
        elif analysis.escalation_recommended:
            await self.escalate(
                event,
                ctx,
                reason="escalation recommended by sentiment analysis",
                source="sentiment",
            )

    async def escalate(
        self, event: Event, ctx: Context, *, reason: str, source: str = "escalate"
    ) -> str | None:
        """Transfer the call to a human once; returns the number, or None if not transferred.

        `source` names the caller (one per handler): only a retry of the same handler on
        the same delivery may take over a claim its earlier attempt left behind.
        """
        call_id = event.call_id or ""
        keys = CallKeys(ctx.settings.key_prefix, call_id)
        attempt = os.urandom(8).hex()
        owner = _owner(ctx, source)
        claim = orjson.dumps(
            {
                "delivery_id": ctx.delivery_id,
                "owner": owner,
                "attempt": attempt,
                "state": "claimed",
                "reason": reason,
            }
        )
        outcome = await _CLAIM(
            ctx.redis,
            [keys.escalation, keys.ended],
            [claim, self.config.escalation_claim_ttl_seconds, owner],
        )
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        if outcome == "sending":
            # An earlier attempt of this handler died between sending and recording.
            ctx.log.error("escalation.uncertain", why="an earlier attempt died while sending")
            raise EscalationUncertain(f"transfer of {call_id} may have happened (attempt died)")
        if outcome == "taken_over":
            ctx.log.info("escalation.taken_over", why="an earlier attempt died before sending")
        elif outcome != "claimed":
            ctx.log.info(
                "escalation.skipped", why="call ended" if outcome == "ended" else "claimed"
            )
            return None

        # The caller is waiting: every request on the way to the transfer spends the
        # budget's live class, never queued behind dialing or polling.
        api = ctx.ringez.with_priority(Priority.LIVE)
        sent = False
        try:
            call = await api.calls.get(call_id)
            if call.status in ENDED_STATUSES:
                await self._set_state(ctx, keys, claim, "skipped", status=call.status)
                ctx.log.info("escalation.skipped", why=f"call is {call.status}")
                return None
            target = await self._route(event, api)
            note = f"Escalated by ringez-agent-worker: {reason}"
            if not await _MOVE(ctx.redis, [keys.escalation], [attempt, "claimed", "sending"]):
                # A retry of this handler took the claim over (we were presumed dead; it
                # decides, and if it fails its own retry must still run this handler), or
                # the call ended and its end marked the claim skipped.
                raise Superseded(
                    f"the escalation claim on {call_id} was taken over or the call ended"
                )
            sent = True
            # One HTTP attempt while `sending`: a refused one (503/429, no connection) frees
            # the claim and the job's own retry tries again, so the window in which a kill
            # leaves the outcome unknown is one request, not a retry loop with backoff.
            await api.calls.transfer(call_id, transfer_to=target, transfer_note=note, attempts=1)
        except Exception as exc:
            if sent and not _definitely_refused(exc):
                await self._set_state(ctx, keys, claim, "uncertain", error=type(exc).__name__)
                ctx.log.error("escalation.uncertain", error=f"{type(exc).__name__}: {exc}")
                raise EscalationUncertain(
                    f"transfer of {call_id} may have happened: {type(exc).__name__}"
                ) from exc
            # Nothing was transferred: free the claim so a retry or a later segment can.
            await _RELEASE(ctx.redis, [keys.escalation], [attempt])
            ctx.log.warning("escalation.failed", error=f"{type(exc).__name__}: {exc}")
            raise
        await self._set_state(ctx, keys, claim, "transferred", transfer_to=target)
        ctx.log.info("escalation.transferred", transfer_to=target, reason=reason)
        return target

    async def _route(self, event: Event, api: RingezClient) -> str:
        caller: dict[str, Any] = {"language": "en-US"}
        number = getattr(event.data, "from_number", None)
        if is_e164(number):
            caller["phone_number"] = number
        routing = await api.agents.route_call(
            caller_info=caller,
            routing_criteria={
                "department": self.config.escalation_department,
                "skill_required": self.config.escalation_skill,
                "priority": self.config.escalation_priority,
            },
        )
        candidates = []
        if routing.agent_available:
            candidates.append(routing.route_to)
        candidates += [_option_number(o) for o in routing.fallback_options or []][:1]
        candidates.append(self.config.escalation_default_number)
        for number in candidates:
            if is_e164(number):
                return number  # type: ignore[return-value]
        raise InvalidNumber("no E.164 transfer target from routing, fallbacks or the default")

    async def _set_state(
        self, ctx: Context, keys: CallKeys, claim: bytes, state: str, **fields: Any
    ) -> None:
        record = {**orjson.loads(claim), "state": state, **fields}
        await ctx.redis.set(keys.escalation, orjson.dumps(record), keepttl=True)


def _owner(ctx: Context, source: str) -> str:
    # Two handlers of one delivery may both escalate (sentiment, and support's intent):
    # each owns its own claim, so one never takes the other's claim over.
    return f"{ctx.delivery_id}:{source}"


def _option_number(option: Any) -> str | None:
    if isinstance(option, dict):
        return option.get("route_to") or option.get("number")
    if isinstance(option, str):
        return option
    return getattr(option, "route_to", None)


def _definitely_refused(exc: BaseException) -> bool:
    """True when the transfer surely did not run: a 4xx or 503 answer, or no connection."""
    if getattr(exc, "maybe_executed", True):
        return False
    status = getattr(exc, "status", None)
    return status is None or status == 503 or (400 <= status < 500 and status != 408)
