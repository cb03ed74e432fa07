"""Named call scenarios: a real session and call in the sandbox state, and their events.

Each scenario creates its session and call through the same state the REST API serves,
so an agent reacting to the events can act on them (transfer, hang up, add credits).
If the agent hangs the call up, the scenario stops talking and reports how it ended.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ringez_worker.logs import get_logger
from ringez_worker.sandbox.config import ANSWERS, BUSY, NO_ANSWER
from ringez_worker.sandbox.engine import Sandbox
from ringez_worker.sandbox.models import Call, iso
from ringez_worker.sandbox.quality import degrade

log = get_logger("ringez.sandbox.scenarios")

CALM_LINES = (
    "Hi, I'm calling to check on the order I placed last week.",
    "Sure, the order number is 4 4 1 7.",
    "Perfect, that's all I needed. Thanks, have a good day.",
)
ANGRY_LINES = (
    "Hello, I was charged twice for the same call last week.",
    "This is ridiculous, I have called three times and nobody has fixed it.",
    "I'm furious. Get me a manager right now.",
)
LOW_BALANCE_LINES = (
    "Hi, I need to call my bank about a payment.",
    "Okay, I'll hold while you connect me.",
)
SUPERVISOR_LINE = "Hello, this is the supervisor. I'm sorry about the trouble, let me fix it."

# A coroutine, not any awaitable: `Sandbox.spawn` makes a task of it.
Play = Callable[[Sandbox, Call], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    to_number: str
    play: Play
    initial_minutes: Callable[[Sandbox], float] | None = None


@dataclass
class ScenarioRun:
    """A started scenario: the ids it created and the task emitting its events."""

    name: str
    session_id: str
    call_id: str
    task: asyncio.Task[None]

    @property
    def done(self) -> bool:
        return self.task.done()

    def view(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "session_id": self.session_id,
            "call_id": self.call_id,
            "done": self.done,
        }


async def _connect(sb: Sandbox, call: Call) -> bool:
    """initiated, ringing, answered; False if the call was hung up before it connected."""
    pace = sb.config.pacing_seconds
    await sb.emit_initiated(call)
    if await sb.ended_within(call, pace):
        return False
    sb.state.ring(call)
    await sb.emit_call_event(call, "call.ringing", status="ringing", to_number=call.to_number)
    if await sb.ended_within(call, pace):
        return False
    sb.state.answer(call)
    await sb.emit_call_event(
        call, "call.answered", status="in-progress", answered_at=iso(call.answered_at or 0)
    )
    return not await sb.ended_within(call, pace)


async def _talk(sb: Sandbox, call: Call, lines: tuple[str, ...], speaker: str = "caller") -> bool:
    """Say each line; False as soon as the call has been hung up."""
    for text in lines:
        if not call.active:
            return False
        await sb.say(call, text, speaker=speaker)
        if await sb.ended_within(call, sb.config.pacing_seconds):
            return False
    return call.active


async def _calm(sb: Sandbox, call: Call) -> None:
    if await _connect(sb, call) and await _talk(sb, call, CALM_LINES):
        sb.state.complete_call(call, duration=95)
    await sb.finish(call)


async def _angry(sb: Sandbox, call: Call) -> None:
    if await _connect(sb, call) and await _talk(sb, call, ANGRY_LINES):
        # The caller hangs on for a while: time for an agent to transfer the call.
        await sb.wait_for(
            call,
            lambda c: c.transferred_to is not None or not c.active,
            sb.config.escalation_wait_seconds,
        )
        if call.transferred_to is not None and call.active:
            await _talk(sb, call, (SUPERVISOR_LINE,), speaker="recipient")
        sb.state.complete_call(call, duration=240)
    await sb.finish(call)


async def _busy(sb: Sandbox, call: Call) -> None:
    await sb.emit_initiated(call)
    if not await sb.ended_within(call, sb.config.pacing_seconds):
        sb.state.fail(call, "busy", "busy")
    await sb.finish(call)


async def _no_answer(sb: Sandbox, call: Call) -> None:
    await sb.emit_initiated(call)
    if not await sb.ended_within(call, sb.config.pacing_seconds):
        sb.state.ring(call)
        await sb.emit_call_event(call, "call.ringing", status="ringing", to_number=call.to_number)
        if not await sb.ended_within(call, sb.config.no_answer_seconds):
            sb.state.fail(call, "no-answer", "no-answer")
    await sb.finish(call)


def _low_balance_minutes(sb: Sandbox) -> float:
    # Two minutes above the threshold: the 3-minute call below takes the wallet under it.
    return sb.config.low_balance_minutes + 2


async def _low_balance(sb: Sandbox, call: Call) -> None:
    if await _connect(sb, call) and await _talk(sb, call, LOW_BALANCE_LINES):
        sb.state.complete_call(call, duration=170)
    await sb.finish(call)


async def _poor_quality(sb: Sandbox, call: Call) -> None:
    if await _connect(sb, call) and await degrade(sb, call):
        sb.state.complete_call(call, duration=120)
    await sb.finish(call)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("calm", "a calm caller asks about an order and hangs up", ANSWERS, _calm),
        Scenario(
            "angry",
            "the caller gets angry and asks for a manager, then waits for a transfer",
            ANSWERS,
            _angry,
        ),
        Scenario("busy", "the callee is busy: call.failed with reason busy", BUSY, _busy),
        Scenario(
            "no_answer",
            "the callee rings and never answers: call.failed with reason no-answer",
            NO_ANSWER,
            _no_answer,
        ),
        Scenario(
            "low_balance",
            "a call drains the wallet under the threshold: balance.low follows call.completed",
            ANSWERS,
            _low_balance,
            initial_minutes=_low_balance_minutes,
        ),
        Scenario(
            "poor_quality",
            "call quality degrades: MOS under both thresholds, packet loss spiking",
            ANSWERS,
            _poor_quality,
        ),
    )
}


class UnknownScenario(KeyError):
    """No scenario has that name."""


def start_scenario(sb: Sandbox, name: str, receiver_url: str | None = None) -> ScenarioRun:
    """Create the scenario's session and call now; emit its events in the background.

    Events go to `receiver_url`, else to the sandbox's configured receiver.
    """
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise UnknownScenario(name)
    minutes = scenario.initial_minutes(sb) if scenario.initial_minutes else None
    if minutes is not None:
        # A wallet must hold a whole minute for the call to be placed at all.
        minutes = max(1.0, math.ceil(minutes * 100) / 100)
    session = sb.state.create_session(
        "guest",
        agent_context={"scenario": name},
        consent={"calling_authorized": True, "currency": "USD"},
        initial_minutes=minutes,
    )
    call, _ = sb.state.initiate_call(
        session.session_id,
        scenario.to_number,
        metadata={"scenario": name},
        webhook_url=receiver_url or sb.config.receiver_url,
    )
    log.info("sandbox.scenario.started", scenario=name, call_id=call.call_id)
    task = sb.spawn(scenario.play(sb, call))
    return ScenarioRun(name=name, session_id=session.session_id, call_id=call.call_id, task=task)


async def play_scenario(sb: Sandbox, name: str, receiver_url: str | None = None) -> ScenarioRun:
    """Run a scenario to its end."""
    run = start_scenario(sb, name, receiver_url)
    await run.task
    return run
