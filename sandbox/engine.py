"""The running sandbox: state, webhook emission, and the life of each simulated call."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ringez_worker.handlers.events import EVENT_NAMES
from ringez_worker.logs import get_logger
from ringez_worker.sandbox.config import SandboxConfig, outcome_of
from ringez_worker.sandbox.emitter import Delivery, WebhookEmitter, event_body
from ringez_worker.sandbox.faults import FaultInjector
from ringez_worker.sandbox.models import Call, iso
from ringez_worker.sandbox.state import SandboxState

log = get_logger("ringez.sandbox")

EVENTS = EVENT_NAMES


@dataclass(frozen=True)
class Sink:
    url: str
    secret: str | None = None  # None: the sandbox's webhook secret


@dataclass
class Subscription:
    webhook_id: str
    session_id: str
    url: str
    events: frozenset[str]
    secret: str | None


@dataclass
class EmittedEvent:
    """An event the sandbox produced, whether or not anyone was there to receive it."""

    event: str
    data: dict[str, Any]
    body: bytes
    deliveries: list[Delivery] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "data": self.data,
            "deliveries": [d.view() for d in self.deliveries],
        }


class Sandbox:
    """One sandbox: what the REST app and the scenarios share."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.state = SandboxState(config)
        self.emitter = WebhookEmitter(dataclasses.replace(config.emitter), config.webhook_secret)
        self.faults = FaultInjector(config.faults)
        # Copies: steering a running sandbox never edits the config it was built from.
        self.routing = dataclasses.replace(config.routing)
        self.events: list[EmittedEvent] = []
        self.subscriptions: dict[str, Subscription] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # Background work.

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background until it ends or the sandbox closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)
        return task

    async def aclose(self) -> None:
        """Stop every simulated call and scenario, then close the HTTP client."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.emitter.aclose()

    # Events.

    def sinks_for(self, session_id: str, call: Call | None, event: str) -> list[Sink]:
        """The call's webhook_url, the session's subscriptions, else the configured receiver."""
        sinks: list[Sink] = []
        if call is not None and call.webhook_url:
            sinks.append(Sink(call.webhook_url))
        for sub in self.subscriptions.values():
            if sub.session_id == session_id and (not sub.events or event in sub.events):
                sinks.append(Sink(sub.url, sub.secret))
        if not sinks and self.config.receiver_url:
            sinks.append(Sink(self.config.receiver_url))
        return list(dict.fromkeys(sinks))

    async def emit(self, event: str, data: dict[str, Any], sinks: list[Sink]) -> EmittedEvent:
        """Record `event` and deliver the same signed bytes to every sink, in order."""
        record = EmittedEvent(event=event, data=data, body=event_body(event, data))
        self.events.append(record)
        for sink in sinks:
            record.deliveries += await self.emitter.send(sink.url, record.body, secret=sink.secret)
        return record

    async def emit_call_event(self, call: Call, event: str, **extra: Any) -> EmittedEvent:
        data = {"call_id": call.call_id, "session_id": call.session_id, **extra}
        return await self.emit(event, data, self.sinks_for(call.session_id, call, event))

    async def say(
        self, call: Call, text: str, *, speaker: str = "caller", confidence: float = 0.94
    ) -> EmittedEvent:
        """Add a final transcript segment to the call and emit `transcription.updated`."""
        offset = float(call.elapsed(self.state.now()))
        self.state.add_segment(call, speaker, text, confidence, offset)
        return await self.emit_call_event(
            call,
            "transcription.updated",
            text=text,
            speaker=speaker,
            is_final=True,
            confidence=confidence,
        )

    async def finish(self, call: Call) -> None:
        """Emit how an ended call ended, then `balance.low` if its charge crossed the threshold."""
        if call.status == "completed":
            await self.emit_call_event(
                call,
                "call.completed",
                status="completed",
                duration=call.duration,
                cost=call.cost,
                currency=call.currency,
                transferred_to=call.transferred_to,
            )
        else:
            await self.emit_call_event(call, "call.failed", status=call.status, reason=call.reason)
        if call.balance_low is not None:
            data = {
                "session_id": call.session_id,
                "call_id": call.call_id,
                "balance": call.balance_low,
                "threshold_minutes": self.config.low_balance_minutes,
            }
            await self.emit(
                "balance.low", data, self.sinks_for(call.session_id, call, "balance.low")
            )

    async def wait_for(self, call: Call, predicate: Callable[[Call], bool], seconds: float) -> bool:
        """Wait until `predicate(call)` holds (True) or `seconds` pass (False)."""
        deadline = time.monotonic() + seconds
        while not predicate(call):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # No await between this clear and the check above, so no change is missed.
            call.changed.clear()
            # asyncio.timeout: 3.11's wait_for can swallow a cancellation (gh-86296).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await call.changed.wait()
        return True

    async def ended_within(self, call: Call, seconds: float) -> bool:
        """Pause for up to `seconds`; True if the call ended meanwhile (hung up by the API)."""
        return await self.wait_for(call, lambda c: not c.active, seconds)

    # Calls placed through the REST API.

    def start_call(self, call: Call) -> asyncio.Task[Any]:
        """Play a REST-initiated call out by its number's sandbox behaviour."""
        return self.spawn(self._simulate(call))

    async def emit_initiated(self, call: Call) -> None:
        """The first event of every call."""
        await self.emit_call_event(
            call,
            "call.initiated",
            status="initiated",
            to_number=call.to_number,
            from_number=call.from_number,
        )

    async def _simulate(self, call: Call) -> None:
        pace = self.config.pacing_seconds
        await self.emit_initiated(call)
        if await self.ended_within(call, pace):
            return await self.finish(call)
        outcome = outcome_of(call.to_number)
        if outcome == "busy":
            self.state.fail(call, "busy", "busy")
            return await self.finish(call)
        self.state.ring(call)
        await self.emit_call_event(call, "call.ringing", status="ringing", to_number=call.to_number)
        if outcome == "no-answer":
            if not await self.ended_within(call, self.config.no_answer_seconds):
                self.state.fail(call, "no-answer", "no-answer")
            return await self.finish(call)
        if await self.ended_within(call, pace):
            return await self.finish(call)
        self.state.answer(call)
        await self.emit_call_event(
            call, "call.answered", status="in-progress", answered_at=iso(call.answered_at or 0)
        )
        wallet = self.state.sessions[call.session_id].wallet
        # A call stays connected until hung up, its max_duration, or the wallet runs dry;
        # a transferred one until the person it reached has talked `talk_seconds`.
        limit = min(float(call.settings["max_duration"]), wallet.minutes * 60)
        transferred = await self.wait_for(
            call, lambda c: not c.active or c.transferred_to is not None, limit
        )
        if call.active and transferred:
            if not await self.ended_within(call, self.config.talk_seconds):
                self.state.complete_call(call)
        elif call.active:
            self.state.complete_call(call)
        await self.finish(call)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sandbox.task_failed", error=repr(task.exception()))
