"""The outbound campaign agent (the guide's Pattern 2), driven by webhooks and tasks.

The guide blocks in a loop per call; here nothing waits:
- `campaigns.pass` (one campaign) is where calls are placed: it opens the campaign's
  session (max_spend_limit = the budget) on the first pass, re-sends dials a killed
  worker left, finds calls whose end was never reported, then claims and dials until a
  limit says stop (agents/campaign/store.py `_NEXT`: one script checks every limit and
  makes the claim). It is queued by start/resume, by every call that ends, when a retry
  falls due, when the per-minute limit or the calling window frees a slot, and as a
  sweep every CAMPAIGN_SWEEP_SECONDS while the campaign runs.
- Each dial is claimed in Redis (attempt n) before the request and carries the
  idempotency key `campaign:<id>:<contact>:<n>`: a re-send after a crash is the same call.
- `call.answered`: synthesize the message once per campaign, play it, collect the DTMF
  answer, hang up. `call.completed` / `call.failed`: record, free the slot, add the real
  cost, schedule a retry for busy / no answer, queue the next pass.
- `campaigns.ring_check`, `--ring-timeout` after the dial: a call still ringing is hung up
  (its call.completed then counts as no answer).
"""

from __future__ import annotations

import time
from typing import Any

from ringez_worker.agents.campaign.metrics import CampaignMetrics
from ringez_worker.agents.campaign.models import CampaignConfig
from ringez_worker.agents.campaign.store import CampaignKeys, CampaignStore
from ringez_worker.agents.campaign.window import closed_zones, seconds_until_open
from ringez_worker.agents.config import AgentSettings
from ringez_worker.api.errors import InsufficientBalance, RingezError
from ringez_worker.api.priority import Priority
from ringez_worker.handlers import Context, Router
from ringez_worker.jobs import schedule_task
from ringez_worker.keys import Keys

PASS = "campaigns.pass"
RING_CHECK = "campaigns.ring_check"
REDIAL = "campaigns.redial"
# A claim older than this with no call id: its worker died between the claim and the
# dial's answer; the pass sends the same request (same key) again.
STALE_DIAL_MS = 20_000
# Past this, a re-send could fall outside Ringez's 5-minute idempotency window and make a
# second call: the attempt ends `failed` (dial outcome unknown) instead.
SAFE_RESEND_MS = 240_000
# How long a session being opened by a worker that may have died is left to it.
STALE_OPEN_MS = 30_000
CALL_MAP_TTL_SECONDS = 2 * 24 * 3600


class NotMappedYet(Exception):
    """call.answered for a call whose dial has not been written down yet: try again."""

    retryable = True


def _ms() -> int:
    return int(time.time() * 1000)


def campaign_call_key(prefix: str, call_id: str) -> str:
    """The campaigns' call map (for the own-calls guard, agents/own_calls.py)."""
    return CampaignKeys(prefix).call(call_id)


async def schedule_pass(redis: Any, keys: Keys, cid: str, delay_seconds: float = 0.0) -> bool:
    """Queue a pass of campaign `cid`. Now: two task keys take turns (a pass already
    queued sees the new work; while one runs, the other can be queued behind it). Later:
    one task per due second, so a later wake never blocks a sooner one."""
    if delay_seconds <= 0:
        for key in (f"pass:{cid}", f"pass:{cid}:b"):
            if await schedule_task(redis, keys, PASS, {"campaign": cid}, key=key):
                return True
        return False
    due = int(time.time() + delay_seconds)
    return await schedule_task(
        redis,
        keys,
        PASS,
        {"campaign": cid},
        key=f"wake:{cid}:{due}",
        delay_seconds=delay_seconds,
    )


def _cost(value: Any) -> float:
    if isinstance(value, dict):
        value = value.get("amount")
    try:
        return max(0.0, float(value or 0))
    except (TypeError, ValueError):
        return 0.0


class CampaignAgent:
    name = "campaigns"

    def __init__(self, config: AgentSettings, metrics: CampaignMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics

    def register(self, router: Router) -> None:
        router.on_task(PASS, name="agents.campaigns.pass")(self.on_pass)
        router.on_task(REDIAL, name="agents.campaigns.redial")(self.on_redial)
        router.on_task(RING_CHECK, name="agents.campaigns.ring_check")(self.on_ring_check)
        router.add("call.answered", self.on_answered, name="agents.campaigns.answered")
        router.add("call.completed", self.on_ended, name="agents.campaigns.ended")
        router.add("call.failed", self.on_ended, name="agents.campaigns.ended")

    def _store(self, ctx: Context) -> CampaignStore:
        return CampaignStore(ctx.redis, ctx.settings.key_prefix)

    def _keys(self, ctx: Context) -> Keys:
        return Keys(prefix=ctx.settings.key_prefix, queue=ctx.settings.queue_name)

    @staticmethod
    def _data(event: Any) -> dict[str, Any]:
        return event.data if isinstance(event.data, dict) else event.data.model_dump()

    # The pass.

    async def on_pass(self, event: Any, ctx: Context) -> None:
        cid = str(self._data(event).get("campaign", ""))
        store = self._store(ctx)
        record = await store.get(cid)
        config = await store.config(cid)
        if record is None or config is None:
            return
        if record["state"] in ("starting", "opening"):
            if not await self._open(ctx, store, cid, config):
                return
            record = await store.get(cid) or record
        if record["state"] in ("done", "cancelled"):
            if int(record.get("live", 0)) <= 0 and not record.get("expires_ms"):
                await store.expire(cid, self.config.campaign_record_ttl_seconds, _ms())
            return
        if record["state"] not in ("running", "paused"):
            return
        await self._recover(ctx, store, cid, config)
        if record["state"] != "running":
            return
        zones = [z.decode() for z in await ctx.redis.smembers(store.keys.zones(cid))]  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        while True:
            got = await store.next_dial(cid, _ms(), closed_zones(config.window, zones))
            if got[0] != "dial":
                break
            if not await self._dial(ctx, store, cid, config, got[1], int(got[2])):
                break
        await self._after(ctx, store, cid, config, got, zones)

    async def _after(
        self,
        ctx: Context,
        store: CampaignStore,
        cid: str,
        config: CampaignConfig,
        got: tuple[str, ...],
        zones: list[str],
    ) -> None:
        """Why dialing stopped decides what wakes the campaign next."""
        keys = self._keys(ctx)
        why = got[0] if got else "stopped"
        if why in ("rate", "later"):
            await schedule_pass(ctx.redis, keys, cid, int(got[1]) / 1000)
        elif why == "closed":
            wait = seconds_until_open(config.window, zones)
            await schedule_pass(ctx.redis, keys, cid, min(max(wait, 1.0), 900.0))
            ctx.log.info("campaigns.window_closed", campaign=cid, next_open_s=wait)
        elif why in ("empty", "budget"):
            if await store.settle(cid, _ms(), budget=why == "budget"):
                ctx.log.info("campaigns.done", campaign=cid, reason=why)
                if self.metrics is not None:
                    self.metrics.live.labels(campaign=cid).set(0)
                await store.expire(cid, self.config.campaign_record_ttl_seconds, _ms())
                return
        record = await store.get(cid) or {}
        if self.metrics is not None:
            self.metrics.live.labels(campaign=cid).set(int(record.get("live", 0)))
        if record.get("state") in ("running", "paused") and int(record.get("live", 0)) > 0:
            # Only lost webhooks and crashed dials need this: every other wake is an event.
            await self._sweep(ctx, cid)

    async def _sweep(self, ctx: Context, cid: str) -> None:
        delay = self.config.campaign_sweep_seconds
        mark = f"{ctx.settings.key_prefix}:campaign:{cid}:sweep"
        await schedule_task(
            ctx.redis,
            self._keys(ctx),
            PASS,
            {"campaign": cid},
            key=f"sweep:{cid}:{time.time_ns():x}",
            delay_seconds=delay,
            once_key=mark,
            once_ttl_ms=int(delay * 1000),
        )

    async def _open(
        self, ctx: Context, store: CampaignStore, cid: str, config: CampaignConfig
    ) -> bool:
        """The campaign's session, created once, its max_spend_limit the budget."""
        held = await store.claim_open(cid, _ms(), STALE_OPEN_MS)
        if held > 0:
            # Another worker is opening it. If that worker was killed mid-open, nothing
            # else would ever pass this campaign again (no sweep runs before `running`):
            # CI saw 40 of 40 contacts left pending so. Come back when its claim is stale.
            await schedule_pass(ctx.redis, self._keys(ctx), cid, held / 1000)
            return False
        if held < 0:
            return False
        try:
            session = await ctx.ringez.with_priority(Priority.DIAL).sessions.create(
                session_type="authenticated",
                agent_context={"agent": "campaign", "campaign_id": cid},
                user_consent={
                    "calling_authorized": True,
                    "currency": config.currency,
                    "max_spend_limit": config.budget,
                },
            )
        except RingezError as exc:
            if exc.retryable:
                await store.move(cid, ("opening",), "starting", "", _ms())
                raise
            await store.move(cid, ("opening",), "paused", f"session refused: {exc}", _ms())
            ctx.log.warning("campaigns.session_refused", campaign=cid, error=type(exc).__name__)
            return False
        # The reservations' rate until the first dial's estimated_rate replaces it.
        await ctx.redis.hset(
            store.keys.campaign(cid), "rate", str(self.config.campaign_rate_estimate)
        )  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        await store.opened(cid, session.session_id, _ms())
        ctx.log.info("campaigns.started", campaign=cid, session_id=session.session_id)
        return True

    async def _recover(
        self, ctx: Context, store: CampaignStore, cid: str, config: CampaignConfig
    ) -> None:
        """Dials a killed worker left, and calls whose end was never reported."""
        now = _ms()
        grace = int(self.config.campaign_lost_call_grace_seconds * 1000)
        lost_after = (config.ring_timeout + config.max_duration) * 1000 + grace
        oldest = now - min(STALE_DIAL_MS, lost_after)
        raw = await ctx.redis.zrangebyscore(store.keys.live(cid), "-inf", oldest)
        for contact in (r.decode() for r in raw):
            c = await store.contact(cid, contact) or {}
            state = c.get("state")
            claimed = now - int(c.get("dial_ms", now))
            if state == "dialing" and claimed >= STALE_DIAL_MS:
                if claimed < SAFE_RESEND_MS:
                    await self._send(ctx, store, cid, config, contact, int(c["n"]))
                else:
                    await self._end(
                        ctx, store, cid, config, contact, "", "failed", "dial outcome unknown"
                    )
            elif (
                state in ("calling", "answered") and now - int(c.get("called_ms", now)) > lost_after
            ):
                call = await ctx.ringez.with_priority(Priority.BACKGROUND).calls.get(c["call_id"])
                if call.status in ("completed", "failed", "busy", "no-answer"):
                    cost = call.estimated_cost.amount if call.estimated_cost else 0
                    await self._end(
                        ctx,
                        store,
                        cid,
                        config,
                        contact,
                        c["call_id"],
                        call.status,
                        "end not reported; read from the call",
                        duration=call.duration or 0,
                        cost=cost or 0,
                    )

    async def _dial(
        self,
        ctx: Context,
        store: CampaignStore,
        cid: str,
        config: CampaignConfig,
        contact: str,
        n: int,
    ) -> bool:
        """Place one claimed attempt; False when the campaign must stop dialing (402)."""
        if self.metrics is not None:
            self.metrics.dialed.labels(campaign=cid).inc()
        try:
            return await self._send(ctx, store, cid, config, contact, n)
        except RingezError as exc:
            if not exc.retryable:
                raise
            # The claim stays: a redial task re-sends the same key, and the pass goes on
            # with the next contact rather than waiting on this one.
            await schedule_task(
                ctx.redis,
                self._keys(ctx),
                REDIAL,
                {"campaign": cid, "contact": contact, "n": n},
                key=f"redial:{cid}:{contact}:{n}",
                delay_seconds=1.0,
            )
            ctx.log.warning("campaigns.dial_retry", campaign=cid, contact=contact, attempt=n)
            return True

    async def _send(
        self,
        ctx: Context,
        store: CampaignStore,
        cid: str,
        config: CampaignConfig,
        contact: str,
        n: int,
    ) -> bool:
        """The dial request of a claim still open (state dialing, attempt n)."""
        c = await store.contact(cid, contact) or {}
        if c.get("state") != "dialing" or c.get("n") != str(n):
            return True  # dialed or ended elsewhere
        session_id = (await store.get(cid) or {}).get("session_id", "")
        try:
            call = await ctx.ringez.with_priority(Priority.DIAL).calls.initiate(
                session_id=session_id,
                to_number=c["phone"],
                from_number=config.from_number,
                call_settings={"max_duration": config.max_duration},
                # As the guide sends it; webhooks do not carry it back (the call map does).
                metadata={"campaign_id": cid, "contact_id": contact, "attempt": n},
                idempotency_key=f"campaign:{cid}:{contact}:{n}",
            )
        except InsufficientBalance as exc:
            # Nothing was created: the contact goes back to the front, the campaign pauses
            # with the reason (resume once the wallet or the limit allows).
            await store.unclaim(cid, contact, n)
            reason = f"insufficient balance or spend limit: {exc}"[:300]
            await store.move(cid, ("running",), "paused", reason, _ms())
            ctx.log.warning("campaigns.paused_402", campaign=cid, reason=reason)
            return False
        except RingezError as exc:
            if exc.retryable:
                raise
            await self._end(
                ctx,
                store,
                cid,
                config,
                contact,
                "",
                "failed",
                f"dial refused: {type(exc).__name__}",
            )
            return True
        if await store.dialed(
            cid, contact, n, call.call_id, call.estimated_rate, _ms(), CALL_MAP_TTL_SECONDS
        ):
            ctx.log.info(
                "campaigns.dialed", campaign=cid, contact=contact, call_id=call.call_id, attempt=n
            )
            await schedule_task(
                ctx.redis,
                self._keys(ctx),
                RING_CHECK,
                {"campaign": cid, "contact": contact, "call_id": call.call_id},
                key=f"ring:{call.call_id}",
                delay_seconds=config.ring_timeout,
            )
        return True

    async def on_redial(self, event: Any, ctx: Context) -> None:
        data = self._data(event)
        store = self._store(ctx)
        cid = str(data["campaign"])
        config = await store.config(cid)
        if config is not None:
            await self._send(ctx, store, cid, config, str(data["contact"]), int(data["n"]))

    async def _end(
        self,
        ctx: Context,
        store: CampaignStore,
        cid: str,
        config: CampaignConfig,
        contact: str,
        call_id: str,
        status: str,
        reason: str,
        *,
        duration: float = 0.0,
        cost: float = 0.0,
    ) -> str:
        now = _ms()
        due = now + int(config.retry_after_seconds * 1000)
        state = await store.finish(
            cid,
            contact,
            call_id,
            status,
            duration=duration,
            cost=cost,
            now_ms=now,
            retry_due_ms=due,
            max_attempts=config.max_attempts,
            reason=reason,
            opt_out_digit=config.opt_out_digit,
        )
        if not state:
            return state
        if self.metrics is not None:
            metric = (
                self.metrics.completed if state in ("done", "opted_out") else self.metrics.failed
            )
            metric.labels(campaign=cid).inc()
            if cost:
                self.metrics.spend.labels(campaign=cid).inc(cost)
        ctx.log.info(
            "campaigns.contact_ended", campaign=cid, contact=contact, state=state, status=status
        )
        keys = self._keys(ctx)
        if state == "retry":
            await schedule_pass(ctx.redis, keys, cid, config.retry_after_seconds)
        await schedule_pass(ctx.redis, keys, cid)
        return state

    # The calls.

    async def on_answered(self, event: Any, ctx: Context) -> None:
        store = self._store(ctx)
        call_id = event.call_id
        got = await store.of_call(call_id)
        if got is None:
            # Answered before the dial's answer was written down (a fast answer): a dial
            # in flight makes it worth another look, a moment later.
            if ctx.job_try <= 3 and await ctx.redis.zcard(store.keys.inflight):
                raise NotMappedYet(f"no campaign contact for {call_id} yet")
            return
        cid, contact, _ = got
        if await store.answered(cid, contact, call_id, _ms()):
            if self.metrics is not None:
                self.metrics.answered.labels(campaign=cid).inc()
        else:
            c = await store.contact(cid, contact) or {}
            # A retry after a crash mid-message: playing it again is the safe side.
            if not (
                c.get("state") == "answered" and c.get("call_id") == call_id and ctx.job_try > 1
            ):
                return
        config = await store.config(cid)
        if config is None:
            return
        live = ctx.ringez.with_priority(Priority.LIVE).calls
        try:
            audio = await self._audio(ctx, store, cid, config)
            await live.play_audio(call_id, audio)
            collected = await live.collect_input(
                call_id,
                {"type": "dtmf", "timeout": config.input_timeout, "num_digits": config.num_digits},
            )
        except RingezError as exc:
            if exc.retryable and not getattr(exc, "maybe_executed", False):
                raise
            # The callee hung up meanwhile (409), or an action that may have run: the
            # call's end is recorded as it comes, without an answer.
            ctx.log.warning(
                "campaigns.message_failed", campaign=cid, contact=contact, error=type(exc).__name__
            )
            return
        digits = collected.digits or ""
        await ctx.redis.hset(store.keys.contact(cid, contact), "digits", digits)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        await self._hang_up(ctx, call_id)
        ctx.log.info(
            "campaigns.answer_recorded", campaign=cid, contact=contact, pressed=bool(digits)
        )

    async def _audio(
        self, ctx: Context, store: CampaignStore, cid: str, config: CampaignConfig
    ) -> str:
        """The message's audio, synthesized once per campaign (the first answer)."""
        key = store.keys.campaign(cid)
        cached = await ctx.redis.hget(key, "audio_url")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        if cached:
            return cached.decode()
        audio = await ctx.ringez.with_priority(Priority.LIVE).agents.synthesize_voice(
            config.message, voice=config.voice
        )
        await ctx.redis.hsetnx(key, "audio_url", audio.audio_url or "")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        return audio.audio_url or ""

    async def on_ended(self, event: Any, ctx: Context) -> None:
        store = self._store(ctx)
        got = await store.of_call(event.call_id)
        if got is None:
            return
        cid, contact, _ = got
        config = await store.config(cid)
        if config is None:
            return
        data = self._data(event)
        if event.event == "call.completed":
            status = "completed"
            reason = ""
        else:
            reason = str(data.get("reason") or data.get("status") or "failed")
            status = reason if reason in ("busy", "no-answer") else "failed"
        await self._end(
            ctx,
            store,
            cid,
            config,
            contact,
            event.call_id,
            status,
            reason,
            duration=float(data.get("duration") or 0),
            cost=_cost(data.get("cost")),
        )

    async def _hang_up(self, ctx: Context, call_id: str) -> None:
        """DELETE the call; one that ended meanwhile (404, 409) is what was wanted."""
        try:
            await ctx.ringez.with_priority(Priority.LIVE).calls.hangup(call_id)
        except RingezError as exc:
            if exc.retryable:
                raise
            ctx.log.info("campaigns.hangup_refused", call_id=call_id, error=type(exc).__name__)

    async def on_ring_check(self, event: Any, ctx: Context) -> None:
        data = self._data(event)
        store = self._store(ctx)
        c = await store.contact(str(data["campaign"]), str(data["contact"])) or {}
        if c.get("state") == "calling" and c.get("call_id") == data["call_id"]:
            # Still ringing at --ring-timeout: hang up; call.completed records no answer.
            await self._hang_up(ctx, str(data["call_id"]))
            ctx.log.info(
                "campaigns.ring_timeout", campaign=data["campaign"], contact=data["contact"]
            )
