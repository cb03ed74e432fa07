"""Call quality monitor (issue 17; the guide's "Real-time Call Quality Monitoring").

- `call.answered` schedules the first `quality.check` task; each check reads
  GET /calls/{id} (Priority.BACKGROUND) and schedules the next one QUALITY_POLL_SECONDS
  later, so no worker sleeps in a loop. A check that finds the call ended schedules nothing.
- One pending check per call: each check's task key is `<call>:<n>` (a running task
  cannot requeue its own key), so concurrent or redelivered schedulers of step n collapse
  into one job; `call.answered` starts step 0 only by setting the call's `started` mark,
  in the same script (ringez_worker.jobs.enqueue_job's once key).
- A breach is claimed per call+level in Redis (SET NX) before it is logged or acted on,
  so it is logged once and `report_issue` / `switch_codec` (Priority.LIVE) are sent at
  most once per call per level, whatever retries or redeliveries happen.
- Below QUALITY_BUDGET_FLOOR of the rate window left, new calls are not monitored and
  live ones poll 4x slower (said once in the log per process).
"""

from __future__ import annotations

from typing import Any

from ringez_worker.agents.config import AgentSettings
from ringez_worker.agents.quality_metrics import QualityMetrics
from ringez_worker.agents.state import ENDED_STATUSES, QUALITY_IN_SUMMARY, CallKeys
from ringez_worker.api.priority import Priority
from ringez_worker.handlers import Context, Router
from ringez_worker.jobs import schedule_task
from ringez_worker.keys import Keys
from ringez_worker.lua import LuaScript

CHECK = "quality.check"

# KEYS: record, call summary. ARGV: mos, packet loss, latency ("" = none), ttl.
# Ends by folding the record into the summary if the support agent already wrote it.
_RECORD = LuaScript(
    QUALITY_IN_SUMMARY
    + """
local k = KEYS[1]
redis.call('HINCRBY', k, 'samples', 1)
local function worse(field, v, lower)
  if v == '' then return end
  local old = redis.call('HGET', k, field)
  local n = tonumber(v)
  if not old or (lower and n < tonumber(old)) or (not lower and n > tonumber(old)) then
    redis.call('HSET', k, field, v)
  end
end
if ARGV[1] ~= '' then
  redis.call('HINCRBYFLOAT', k, 'mos_sum', ARGV[1])
  redis.call('HINCRBY', k, 'mos_samples', 1)
end
worse('mos_min', ARGV[1], true)
worse('packet_loss_max', ARGV[2], false)
worse('latency_max_ms', ARGV[3], false)
redis.call('EXPIRE', k, tonumber(ARGV[4]))
merge_into_summary(KEYS[2], k)
return 1
"""
)
# KEYS: the breach claim, record, call summary. ARGV: ttl, level.
# 1 for the one caller that claims this call+level; the claim's value for the others.
# The record says `pending` from the claim on, so a breach whose action's outcome a crash
# left unknown still shows in it (and in the summary).
_CLAIM = LuaScript(
    QUALITY_IN_SUMMARY
    + """
if not redis.call('SET', KEYS[1], 'claimed', 'NX', 'EX', ARGV[1]) then
  return redis.call('GET', KEYS[1])
end
redis.call('HSET', KEYS[2], 'breach:' .. ARGV[2], 'pending')
redis.call('EXPIRE', KEYS[2], ARGV[1])
merge_into_summary(KEYS[3], KEYS[2])
return 1
"""
)
# KEYS: the breach claim, record, call summary. ARGV: ttl, level, action taken.
_ACTED = LuaScript(
    QUALITY_IN_SUMMARY
    + """
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[1])
redis.call('HSET', KEYS[2], 'breach:' .. ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[1])
merge_into_summary(KEYS[3], KEYS[2])
return 1
"""
)
_SLOW_FACTOR = 4  # how much slower live calls poll under the budget floor


def breaches(
    cfg: AgentSettings, mos: float | None, loss: float | None, lat: float | None
) -> list[str]:
    """The levels this sample breaches: warning, critical, packet_loss, latency.

    Warning before critical: a check retried after a crash resends its (idempotent)
    issue report before it gets to the codec switch, which it never resends."""
    found: list[str] = []
    if mos is not None and mos < cfg.quality_mos_warn:
        found.append("warning")
    if mos is not None and mos < cfg.quality_mos_critical:
        found.append("critical")
    if loss is not None and loss > cfg.quality_packet_loss_max:
        found.append("packet_loss")
    if lat is not None and lat > cfg.quality_latency_max_ms:
        found.append("latency")
    return found


class QualityAgent:
    name = "quality"

    def __init__(self, config: AgentSettings, metrics: QualityMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics  # the runtime's registry; None: not exported
        self._floor_said = False

    def register(self, router: Router) -> None:
        router.add("call.answered", self.on_answered, name="agents.quality.answered")
        router.add("call.completed", self.on_ended, name="agents.quality.completed")
        router.add("call.failed", self.on_ended, name="agents.quality.failed")
        router.on_task(CHECK, name="agents.quality.check")(self.on_check)

    def _key(self, ctx: Context, call_id: str, name: str) -> str:
        return CallKeys(ctx.settings.key_prefix, call_id).quality(name)

    async def _below_floor(self, ctx: Context) -> bool:
        limiter = ctx.ringez.rate_limiter if ctx.has_ringez else None
        left_fraction = getattr(limiter, "left_fraction", None)
        if left_fraction is None:
            return False
        below = bool(await left_fraction() < self.config.quality_budget_floor)
        if self.metrics is not None:
            self.metrics.budget_floor.set(1 if below else 0)
        if not below:
            self._floor_said = False  # said again next time it falls under
        if below and not self._floor_said:
            self._floor_said = True
            ctx.log.warning("quality.budget_floor", floor=self.config.quality_budget_floor)
        return below

    async def _schedule(
        self,
        ctx: Context,
        call_id: str,
        step: int,
        delay: float,
        once: tuple[str, int] | None = None,
    ) -> bool:
        keys = Keys(prefix=ctx.settings.key_prefix, queue=ctx.settings.queue_name)
        data = {"call_id": call_id, "step": step}
        once_key, once_ttl_ms = once if once is not None else (None, 0)
        return await schedule_task(
            ctx.redis,
            keys,
            CHECK,
            data,
            key=f"{call_id}:{step}",
            delay_seconds=delay,
            once_key=once_key,
            once_ttl_ms=once_ttl_ms,
        )

    async def on_answered(self, event: Any, ctx: Context) -> None:
        call_id = event.call_id
        ttl = self.config.quality_record_ttl_seconds
        started = self._key(ctx, call_id, "started")
        if await ctx.redis.exists(started):
            return  # a redelivery: the chain of checks already runs (or ran)
        if await self._below_floor(ctx):
            ctx.log.info("quality.not_monitored", call_id=call_id, reason="budget_floor")
            return
        # The `started` mark and step 0 in one script: marking after scheduling left a
        # window (a crash between the two, step 0 done by the time of the redelivery) for
        # a second chain; marking before it, one for no chain at all.
        await self._schedule(
            ctx, call_id, 0, self.config.quality_poll_seconds, once=(started, ttl * 1000)
        )

    async def on_ended(self, event: Any, ctx: Context) -> None:
        ttl = self.config.quality_record_ttl_seconds
        await ctx.redis.set(self._key(ctx, event.call_id, "ended"), "1", ex=ttl)

    async def on_check(self, event: Any, ctx: Context) -> None:
        data = event.data if isinstance(event.data, dict) else event.data.model_dump()
        call_id = str(data["call_id"])
        step = int(data.get("step", 0))
        if await ctx.redis.exists(self._key(ctx, call_id, "ended")):
            return
        status = await ctx.ringez.with_priority(Priority.BACKGROUND).calls.get(call_id)
        if status.status in ENDED_STATUSES:
            return
        q = status.quality_metrics
        if q is not None and self.metrics is not None:
            for hist, value in (
                (self.metrics.mos, q.mos_score),
                (self.metrics.packet_loss, q.packet_loss),
                (self.metrics.latency, q.latency_ms),
            ):
                if value is not None:
                    hist.observe(value)
        if q is not None:
            await self._record(ctx, call_id, q.mos_score, q.packet_loss, q.latency_ms)
            for level in breaches(self.config, q.mos_score, q.packet_loss, q.latency_ms):
                await self._breach(ctx, call_id, level, q.model_dump())
        delay = self.config.quality_poll_seconds
        if await self._below_floor(ctx):
            delay *= _SLOW_FACTOR
        await self._schedule(ctx, call_id, step + 1, delay)

    async def _record(
        self, ctx: Context, call_id: str, mos: float | None, loss: float | None, lat: float | None
    ) -> None:
        # One script: the record's min/max/mean stay consistent with no read-modify-write
        # race between workers. "" means "not measured this poll".
        args = ["" if v is None else repr(v) for v in (mos, loss, lat)]
        ttl = str(self.config.quality_record_ttl_seconds)
        keys = CallKeys(ctx.settings.key_prefix, call_id)
        await _RECORD(ctx.redis, [keys.quality("record"), keys.summary], [*args, ttl])

    async def _breach(
        self, ctx: Context, call_id: str, level: str, metrics: dict[str, Any]
    ) -> None:
        ttl = self.config.quality_record_ttl_seconds
        claim = self._key(ctx, call_id, f"breach:{level}")
        keys = CallKeys(ctx.settings.key_prefix, call_id)
        record = [claim, keys.quality("record"), keys.summary]
        done = await _CLAIM(ctx.redis, record, [ttl, level])
        if done != 1:
            # A claim left "claimed" by a crashed attempt: report_issue carries an
            # idempotency key, so resending is safe; switch_codec has none, so it is not
            # resent (at most once beats twice).
            if done != b"claimed" or level != "warning":
                return
        else:
            ctx.log.warning("quality.breach", call_id=call_id, level=level, **metrics)
            if self.metrics is not None:
                self.metrics.breaches.labels(level=level).inc()
        live = ctx.ringez.with_priority(Priority.LIVE).calls
        if level == "warning":
            await live.report_issue(
                call_id,
                {"type": "quality", "metrics": metrics},
                idempotency_key=f"quality:{call_id}:warning",
            )
        elif level == "critical":
            await live.switch_codec(call_id, "OPUS")
        action = {"warning": "report_issue", "critical": "switch_codec"}.get(level, "logged")
        await _ACTED(ctx.redis, record, [ttl, level, action])
