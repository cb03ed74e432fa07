"""Support agent: follows the conversation, detects intents, routes them, sums the call up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from ringez_worker.agents.config import AgentSettings
from ringez_worker.agents.escalation import EscalationAgent
from ringez_worker.agents.state import CallKeys, append_once, before_own, write_summary
from ringez_worker.handlers import CallAnswered, Context, Event, Router, TranscriptionUpdated
from ringez_worker.handlers.router import IntentFunc
from ringez_worker.transcripts import REDACTED_TEXT


class SupportAgent:
    """Registers its handlers on a Router. Intent handlers come from `intents`, a Router
    on which users call `@router.on_intent(...)` as they call `@router.on(...)`."""

    name = "support"

    def __init__(
        self,
        config: AgentSettings,
        escalation: EscalationAgent | None = None,
        intents: Router | None = None,
    ) -> None:
        self.config = config
        self.escalation = escalation
        self.intents = Router()
        self.intents.on_intent("account_inquiry")(answer_account_inquiry)
        if intents is not None:
            self.intents.include(intents)

    def on_intent(self, *intents: str) -> Callable[[IntentFunc], IntentFunc]:
        """Register `func(event, intent, ctx)` for the named intents on this agent."""
        return self.intents.on_intent(*intents)

    def register(self, router: Router) -> None:
        router.add("call.answered", self.on_answered, name="agents.support.call_answered")
        router.add("transcription.updated", self.on_transcription, name="agents.support.intent")
        router.add("call.completed", self.on_ended, name="agents.support.summary")
        router.add("call.failed", self.on_ended, name="agents.support.summary")

    async def on_answered(self, event: CallAnswered, ctx: Context) -> None:
        keys = CallKeys(ctx.settings.key_prefix, event.data.call_id)
        opened = {"session_id": event.data.session_id, "answered_at": event.data.answered_at}
        await ctx.redis.set(
            keys.opened, orjson.dumps(opened), ex=self.config.support_state_ttl_seconds
        )
        ctx.log.info("support.conversation_opened")

    async def on_transcription(self, event: TranscriptionUpdated, ctx: Context) -> None:
        data = event.data
        keys = CallKeys(ctx.settings.key_prefix, data.call_id)
        ttl = self.config.support_state_ttl_seconds
        # PRIVACY_REDACT_TRANSCRIPTS: the text is used here, never written down.
        redact = ctx.settings.privacy_redact_transcripts
        if not data.is_final:
            # Interim text only updates the live line; intents are read from final segments.
            await ctx.redis.set(keys.live, REDACTED_TEXT if redact else data.text, ex=ttl)
            return
        said = REDACTED_TEXT if redact else data.text
        segment = {"speaker": data.speaker, "text": said, "at": time.time()}
        did = ctx.delivery_id
        async with ctx.redis.pipeline(transaction=False) as pipe:
            # Once per delivery: a retry after a failed API call below appends nothing.
            keep = self.config.support_context_segments
            append_once(pipe, keys, "segments", did, orjson.dumps(segment), ttl, keep=keep)
            pipe.delete(keys.live)
            # The intents before this segment's own, even if an earlier attempt added it.
            before_own(pipe, keys, "intents", did, 3)
            *_, previous = await pipe.execute()
        if data.speaker not in (None, "caller") or not data.text.strip():
            return

        intent = await ctx.ringez.agents.detect_intent(
            call_id=data.call_id,
            transcript_segment=data.text,
            context={"previous_intents": [p.decode() for p in previous]},
        )
        name = intent.intent or "unknown"
        await append_once(ctx.redis, keys, "intents", ctx.delivery_id, name, ttl)
        ctx.log.info("support.intent", intent=name, confidence=intent.confidence)

        if name in self.config.escalation_intents:
            if self.escalation is None:
                ctx.log.warning("support.escalation_disabled", intent=name)
                return
            await self.escalation.escalate(
                event, ctx, reason=f"caller intent {name}", source="support.intent"
            )
            return
        for handler in self.intents.intent_handlers(name):
            await handler(event, intent, ctx)

    async def on_ended(self, event: Event, ctx: Context) -> None:
        call_id = event.call_id or ""
        keys = CallKeys(ctx.settings.key_prefix, call_id)
        async with ctx.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.intents, 0, -1)
            pipe.lrange(keys.sentiments, 0, -1)
            pipe.get(keys.escalation)
            intents, sentiments, escalation = await pipe.execute()

        lines = 0
        if event.event == "call.completed":
            from ringez_worker.api.errors import NO_SUCH_CALL_CODES, NotFound

            try:
                transcript = await ctx.ringez.transcripts.get(call_id)
                lines = len(transcript.transcript or [])
            except NotFound as exc:
                # Only a 404 that names the call means "no transcript"; any other one
                # (a path the API does not serve) is a real failure.
                if exc.code not in NO_SUCH_CALL_CODES:
                    raise
        scores = [float(s) for s in sentiments]
        summary = {
            "call_id": call_id,
            "session_id": event.session_id,
            "outcome": event.event.removeprefix("call."),
            "reason": getattr(event.data, "reason", None),
            # When the call ended (the event's own time, epoch s): the daily report's clock.
            "ended_at": event.timestamp.timestamp(),
            "duration": getattr(event.data, "duration", None),
            "cost": getattr(event.data, "cost", None),
            "intents": [i.decode() for i in intents],
            "sentiment": _trend(scores),
            "escalated": orjson.loads(escalation).get("state") if escalation else None,
            "transcript_lines": lines,
        }
        async with ctx.redis.pipeline(transaction=False) as pipe:
            # With the quality record merged in, whichever of the two finishes last.
            write_summary(pipe, keys, orjson.dumps(summary), self.config.summary_ttl_seconds)
            pipe.delete(*keys.live_state())
            await pipe.execute()
        ctx.log.info("support.call_summary", **{k: v for k, v in summary.items() if k != "call_id"})


def _trend(scores: list[float]) -> dict[str, Any]:
    if not scores:
        return {"samples": 0}
    return {
        "samples": len(scores),
        "first": scores[0],
        "last": scores[-1],
        "min": min(scores),
        "mean": round(sum(scores) / len(scores), 3),
    }


async def answer_account_inquiry(event: TranscriptionUpdated, intent: Any, ctx: Context) -> None:
    """Built-in example: answer from the call's wallet balance, spoken back with TTS."""
    balance = await ctx.ringez.wallet.balance(event.data.session_id)
    minutes = balance.balance.minutes if balance.balance else None
    text = f"You have {minutes:g} minutes left." if minutes is not None else "Let me check that."
    audio = await ctx.ringez.agents.synthesize_voice(text=text)
    ctx.log.info("support.account_answer", minutes=minutes, audio_url=audio.audio_url)
