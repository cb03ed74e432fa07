"""The chaos run's load: call scripts that Ringez would send, signed, paced, retried until 2xx.

Three kinds of script, in a mix that adds up to exactly `events` distinct events:

- plain calls (made-up ids): initiated, ringing, answered, 1-3 calm final transcript
  segments (sometimes an interim one), completed; one in ten fails busy instead.
- angry calls: a real session and an answered call in the sandbox, the angry caller's
  three lines (the support and escalation agents both want a transfer), a wait for the
  transfer, then the call ends in the sandbox and `call.completed` follows.
- low-balance sessions: a real session whose wallet the script drains `episodes` times;
  each drain starts an episode with a few `balance.low` events, and the script waits for
  the recharge (the wallet back over the agent's threshold) before the next drain.

Every event goes through the real receiver with a valid signature and is sent again until
it is acknowledged (503 while Redis restarts, a refused connection, a timeout), as Ringez
would. About `duplicate_rate` of them are delivered twice, byte-identical: half right
after the first acknowledgement, half concurrently with the first copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ringez_worker import signature
from ringez_worker.sandbox import ANSWERS, Sandbox
from ringez_worker.sandbox.models import iso
from ringez_worker.sandbox.scenarios import ANGRY_LINES, CALM_LINES
from ringez_worker.worker.cli import build_event

CALLER = "+15005550000"
INTERIM = "Hi, I'm calling to check on the"
ANGRY_EVENTS = 3 + len(ANGRY_LINES) + 1
BALANCE_LOW_PER_EPISODE = 3


class SendDeadline(Exception):
    """The run's deadline passed before an event was acknowledged."""


@dataclass
class Pacer:
    """At most `rate` sends a second over the whole run, first come first served."""

    rate: float
    _next: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def wait(self) -> None:
        async with self._lock:
            delay = self._next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = max(self._next, time.monotonic()) + 1.0 / self.rate


@dataclass
class SendStats:
    """What the sender saw: answers by status, retries, redeliveries."""

    answers: Counter[int] = field(default_factory=Counter)  # 0: no answer
    retries: int = 0
    redeliveries: int = 0
    redelivery_answers: Counter[int] = field(default_factory=Counter)
    refused: Counter[int] = field(default_factory=Counter)  # 4xx: a bug in the load
    plan_collisions: int = 0


class Sender:
    """POSTs signed bodies to the receiver until each is acknowledged."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        secret: str,
        pacer: Pacer,
        deadline: float,
    ) -> None:
        self.session = session
        self.url = url
        self.secret = secret
        self.pacer = pacer
        self.deadline = deadline
        self.stats = SendStats()
        # delivery id -> event name, for every distinct event sent (redeliveries excluded)
        self.originals: dict[str, str] = {}
        # delivery id -> number of 202 answers (a new job written), and of any 2xx
        self.accepted: Counter[str] = Counter()
        self.acked: Counter[str] = Counter()
        self._rng = random.Random(0)
        self._watchers: list[tuple[int, asyncio.Event]] = []

    async def acked_at_least(self, count: int) -> None:
        """Return once `count` distinct events have been acknowledged."""
        if len(self.acked) >= count:
            return
        reached = asyncio.Event()
        self._watchers.append((count, reached))
        await reached.wait()

    async def deliver(self, body: bytes, *, redelivery: bool = False, paced: bool = True) -> str:
        """Send `body` until a 2xx; return its delivery id. Raises SendDeadline."""
        did = hashlib.sha256(body).hexdigest()
        if redelivery:
            self.stats.redeliveries += 1
        headers = {
            "Content-Type": "application/json",
            signature.HEADER: signature.sign(body, self.secret),
        }
        if paced:
            await self.pacer.wait()
        while True:
            if time.monotonic() > self.deadline:
                raise SendDeadline(did)
            status, retry_after = await self._post(body, headers)
            self.stats.answers[status] += 1
            if 200 <= status < 300:
                self.acked[did] += 1
                for count, reached in self._watchers:
                    if len(self.acked) >= count:
                        reached.set()
                if status == 202:
                    self.accepted[did] += 1
                if redelivery:
                    self.stats.redelivery_answers[status] += 1
                return did
            if status in (0, 408, 429, 500, 502, 503, 504):
                self.stats.retries += 1
                wait = min(retry_after if retry_after is not None else 0.25, 1.0)
                await asyncio.sleep(wait * self._rng.uniform(0.5, 1.0))
                continue
            self.stats.refused[status] += 1
            return did

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, float | None]:
        try:
            async with self.session.post(self.url, data=body, headers=headers) as resp:
                await resp.read()
                try:
                    retry_after = float(resp.headers.get("Retry-After", ""))
                except ValueError:
                    retry_after = None
                return resp.status, retry_after
        except (TimeoutError, aiohttp.ClientError, OSError):
            return 0, None

    async def send(
        self,
        event: str,
        data: dict[str, Any],
        rng: random.Random,
        dup: float,
        *,
        paced: bool = True,
    ) -> str:
        """Send one new event; with probability `dup` deliver it twice."""
        body = build_event(event, data)
        did = hashlib.sha256(body).hexdigest()
        if did in self.originals:
            self.stats.plan_collisions += 1
        self.originals[did] = event
        draw = rng.random()
        if draw < dup / 2:
            await asyncio.gather(
                self.deliver(body, paced=paced),
                self.deliver(body, redelivery=True, paced=paced),
            )
        else:
            await self.deliver(body, paced=paced)
            if draw < dup:
                await self.deliver(body, redelivery=True, paced=paced)
        return did


@dataclass
class Episode:
    session_id: str
    number: int
    started: float  # epoch seconds, the sandbox's clock
    charged: bool = False  # the wallet was seen back over the threshold


@dataclass
class Script:
    kind: str  # plain | angry | low_balance
    events: int
    start: float  # seconds after the load starts
    index: int
    burst: bool = False  # sent back to back, unpaced: a traffic spike


@dataclass
class LoadRecord:
    """What the load created, for the counting afterwards."""

    angry_calls: dict[str, str] = field(default_factory=dict)  # call_id -> session_id
    low_sessions: list[str] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    planned: Counter[str] = field(default_factory=Counter)
    sent_scripts: Counter[str] = field(default_factory=Counter)


def plan(
    events: int,
    *,
    angry_every: int,
    low_every: int,
    episodes: int,
    duration: float,
    seed: int,
    burst: int = 0,
    burst_at: float = 0.75,
) -> list[Script]:
    """Scripts whose events add up to exactly `events`, with start times over `duration`.

    `burst` of the plain calls' events all start at `burst_at` of the way through and go
    out as fast as the receiver takes them: a backlog for the workers to drain under kills.
    """
    rng = random.Random(seed)
    scripts: list[Script] = []
    per_low = episodes * BALANCE_LOW_PER_EPISODE
    n_angry = max(1, events // angry_every) if angry_every else 0
    n_low = max(1, events // low_every) if low_every else 0
    while n_angry * ANGRY_EVENTS + n_low * per_low > events and (n_angry or n_low):
        n_angry, n_low = max(0, n_angry - 1), max(0, n_low - 1)
    left = events - n_angry * ANGRY_EVENTS - n_low * per_low
    for i in range(n_low):
        # Early, so every episode has time to be charged before the load ends.
        scripts.append(Script("low_balance", per_low, rng.uniform(0, 0.3) * duration, i))
    for i in range(n_angry):
        scripts.append(Script("angry", ANGRY_EVENTS, rng.uniform(0, 0.8) * duration, i))
    i = 0
    spike = min(burst, left)
    while left > 0:
        size = 2 if rng.random() < 0.1 else 4 + rng.randint(1, 3)
        size = min(size, left)
        in_burst = spike > 0
        start = burst_at * duration if in_burst else rng.uniform(0, 0.95) * duration
        scripts.append(Script("plain", size, start, i, burst=in_burst))
        spike -= size
        left -= size
        i += 1
    scripts.sort(key=lambda s: s.start)
    return scripts


class Load:
    """Runs the scripts against the receiver, using the sandbox for real calls and wallets."""

    def __init__(
        self,
        sender: Sender,
        sandbox: Sandbox,
        *,
        seed: int,
        duplicate_rate: float,
        angry_hold_seconds: float,
        episode_wait_seconds: float,
        recharge_threshold_minutes: float,
    ) -> None:
        self.sender = sender
        self.sb = sandbox
        self.seed = seed
        self.dup = duplicate_rate
        self.angry_hold = angry_hold_seconds
        self.episode_wait = episode_wait_seconds
        self.threshold = recharge_threshold_minutes
        self.record = LoadRecord()
        self.tag = f"s{seed}"

    async def run(self, scripts: list[Script]) -> None:
        started = time.monotonic()
        for s in scripts:
            self.record.planned[s.kind] += s.events
        tasks = [asyncio.create_task(self._script(s, started)) for s in scripts]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _script(self, script: Script, started: float) -> None:
        await asyncio.sleep(max(0.0, started + script.start - time.monotonic()))
        rng = random.Random(f"{self.seed}:{script.kind}:{script.index}")
        if script.kind == "angry":
            await self._angry(script, rng)
        elif script.kind == "low_balance":
            await self._low_balance(script, rng)
        else:
            await self._plain(script, rng)
        self.record.sent_scripts[script.kind + ("(burst)" if script.burst else "")] += 1

    async def _send(
        self, rng: random.Random, event: str, data: dict[str, Any], *, burst: bool = False
    ) -> None:
        await self.sender.send(event, data, rng, self.dup, paced=not burst)
        if not burst:
            # A call's events come a little apart, as a real call's would.
            await asyncio.sleep(rng.uniform(0.02, 0.3))

    async def _plain(self, script: Script, rng: random.Random) -> None:
        call_id = f"call_chaos_{self.tag}_{script.index}"
        base = {"call_id": call_id, "session_id": f"sess_chaos_{self.tag}_{script.index % 50}"}
        steps: list[tuple[str, dict[str, Any]]] = [
            ("call.initiated", {"status": "initiated", "to_number": ANSWERS, "from_number": CALLER})
        ]
        if script.events == 2:
            steps.append(("call.failed", {"status": "busy", "reason": "busy"}))
        else:
            steps.append(("call.ringing", {"status": "ringing", "to_number": ANSWERS}))
            answered = {"status": "in-progress", "answered_at": iso(time.time())}
            steps.append(("call.answered", answered))
            lines = script.events - 4
            for n in range(lines):
                text = CALM_LINES[n % len(CALM_LINES)]
                if n == 0 and lines > 1 and rng.random() < 0.3:
                    segment = {"text": INTERIM, "speaker": "caller", "is_final": False}
                else:
                    segment = {"text": text, "speaker": "caller", "is_final": True}
                steps.append(("transcription.updated", {**segment, "confidence": 0.94}))
            duration = rng.randint(20, 300)
            steps.append(
                (
                    "call.completed",
                    {
                        "status": "completed",
                        "duration": duration,
                        "cost": round(duration / 60 * 0.05, 4),
                        "currency": "USD",
                        "transferred_to": None,
                    },
                )
            )
        for event, data in steps[: script.events]:
            await self._send(rng, event, {**base, **data}, burst=script.burst)

    async def _angry(self, script: Script, rng: random.Random) -> None:
        state = self.sb.state
        session = state.create_session(
            "guest",
            agent_context={"chaos": "angry"},
            consent={"calling_authorized": True, "currency": "USD"},
        )
        call, _ = state.initiate_call(session.session_id, ANSWERS, metadata={"chaos": "angry"})
        self.record.angry_calls[call.call_id] = session.session_id
        base = {"call_id": call.call_id, "session_id": session.session_id}
        await self._send(
            rng,
            "call.initiated",
            {**base, "status": "initiated", "to_number": ANSWERS, "from_number": CALLER},
        )
        state.ring(call)
        await self._send(rng, "call.ringing", {**base, "status": "ringing", "to_number": ANSWERS})
        state.answer(call)
        answered = iso(call.answered_at or 0)
        await self._send(
            rng, "call.answered", {**base, "status": "in-progress", "answered_at": answered}
        )
        for line in ANGRY_LINES:
            segment = {"text": line, "speaker": "caller", "is_final": True, "confidence": 0.94}
            await self._send(rng, "transcription.updated", {**base, **segment})
        # The caller waits for a human, then hangs up either way.
        await self.sb.wait_for(call, lambda c: c.transferred_to is not None, self.angry_hold)
        state.complete_call(call, duration=240)
        await self._send(
            rng,
            "call.completed",
            {
                **base,
                "status": "completed",
                "duration": call.duration,
                "cost": call.cost,
                "currency": call.currency,
                "transferred_to": call.transferred_to,
            },
        )

    async def _low_balance(self, script: Script, rng: random.Random) -> None:
        state = self.sb.state
        session = state.create_session(
            "guest",
            agent_context={"chaos": "low_balance"},
            consent={"calling_authorized": True, "currency": "USD"},
        )
        sid = session.session_id
        self.record.low_sessions.append(sid)
        wallet = session.wallet
        episodes = script.events // BALANCE_LOW_PER_EPISODE
        current: Episode | None = None
        for number in range(episodes):
            if current is None or current.charged:
                # Calls drained the wallet: a new low-balance episode starts.
                wallet.minutes = rng.choice((1.5, 2.0, 3.5))
                number_in_session = 0 if current is None else current.number + 1
                current = Episode(sid, number_in_session, state.now())
                self.record.episodes.append(current)
            for j in range(BALANCE_LOW_PER_EPISODE):
                data = {
                    "session_id": sid,
                    "call_id": f"call_chaos_low_{self.tag}_{script.index}_{number}_{j}",
                    "balance": wallet.view(),
                    "threshold_minutes": self.sb.config.low_balance_minutes,
                }
                await self._send(rng, "balance.low", data)
            if not current.charged:
                # No new drain until this episode's charge is in: one charge per episode.
                current.charged = await self._wait_charged(wallet)

    async def _wait_charged(self, wallet: Any) -> bool:
        deadline = time.monotonic() + self.episode_wait
        while time.monotonic() < deadline:
            if wallet.minutes >= self.threshold:
                return True
            await asyncio.sleep(0.05)
        return wallet.minutes >= self.threshold
