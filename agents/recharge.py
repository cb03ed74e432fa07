"""Low-balance recharge agent: tops the wallet up, never twice for one low-balance episode.

- A per-session lock in Redis: concurrent `balance.low` events take turns, and each one
  re-reads the balance first, so only the first of them charges.
- A deterministic idempotency key per episode (`recharge:<session>:<n>`), written down
  as "pending" before the charge: a crash or retry after the charge reuses the same key,
  so Ringez answers with the same transaction instead of charging again.
- A daily cap per session (count and amount); once hit, no charge and an alert line.
- A refused payment (402 or a failed status) is never retried blindly: the episode is
  closed and the event goes to the failed-events record with the reason.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from ringez_worker.agents.config import AgentSettings
from ringez_worker.agents.recharge_record import record_charge
from ringez_worker.handlers import BalanceLow, Context, Router
from ringez_worker.keys import Keys

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockBusy(Exception):
    """Another worker holds this session's recharge lock for too long; try again later."""

    retryable = True


class PaymentFailed(Exception):
    """The charge was refused; charging again blindly could double-charge or loop."""

    retryable = False


class RechargeAgent:
    name = "recharge"

    def __init__(self, config: AgentSettings) -> None:
        self.config = config

    def register(self, router: Router) -> None:
        router.add("balance.low", self.on_balance_low, name="agents.recharge.balance_low")

    def _keys(self, prefix: str, session_id: str) -> dict[str, str]:
        base = f"{prefix}:recharge:{session_id}"
        day = datetime.now(UTC).strftime("%Y%m%d")
        return {
            "lock": f"{base}:lock",
            "episode": f"{base}:episode",
            "pending": f"{base}:pending",
            "daily": f"{base}:daily:{day}",
        }

    async def on_balance_low(self, event: BalanceLow, ctx: Context) -> None:
        session_id = event.data.session_id
        keys = self._keys(ctx.settings.key_prefix, session_id)
        token = ctx.delivery_id
        await self._lock(ctx, keys["lock"], token)
        try:
            await self._recharge(event, ctx, keys)
        finally:
            await ctx.redis.eval(_RELEASE, 1, keys["lock"], token)

    async def _lock(self, ctx: Context, key: str, token: str) -> None:
        ttl_ms = int(self.config.recharge_lock_seconds * 1000)
        deadline = time.monotonic() + self.config.recharge_lock_seconds
        delay = 0.01
        while not await ctx.redis.set(key, token, nx=True, px=ttl_ms):
            if time.monotonic() > deadline:
                raise LockBusy(f"recharge lock for {key} is held")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _recharge(self, event: BalanceLow, ctx: Context, keys: dict[str, str]) -> None:
        cfg = self.config
        session_id = event.data.session_id
        pending = await ctx.redis.get(keys["pending"])
        balance = await ctx.ringez.wallet.balance(session_id)
        minutes = balance.balance.minutes if balance.balance else None
        if pending is None and minutes is not None and minutes >= cfg.recharge_threshold_minutes:
            ctx.log.info("recharge.not_needed", minutes=minutes)
            return

        if pending is None:
            count, spent = await ctx.redis.hmget(keys["daily"], "count", "amount")
            count, spent = int(count or 0), float(spent or 0)
            if (
                count >= cfg.recharge_daily_max_count
                or spent + cfg.recharge_amount > cfg.recharge_daily_max_amount
            ):
                ctx.log.error(
                    "recharge.cap_reached",
                    alert=True,
                    charges_today=count,
                    amount_today=spent,
                    minutes=minutes,
                )
                return
            episode = int(await ctx.redis.get(keys["episode"]) or 0)
            idempotency_key = f"recharge:{session_id}:{episode}"
            await ctx.redis.set(keys["pending"], idempotency_key, ex=7 * 24 * 3600)
        else:
            idempotency_key = pending.decode()

        if cfg.recharge_dry_run:
            await ctx.redis.delete(keys["pending"])
            ctx.log.info(
                "recharge.dry_run",
                would_charge=cfg.recharge_amount,
                currency=cfg.recharge_currency,
                plan=cfg.recharge_plan,
                minutes=minutes,
            )
            return

        token = cfg.recharge_payment_token.get_secret_value() if cfg.recharge_payment_token else ""
        try:
            tx = await ctx.ringez.wallet.add_credits(
                session_id=session_id,
                payment_method=cfg.recharge_payment_method,
                plan=cfg.recharge_plan,
                currency=cfg.recharge_currency,
                amount=cfg.recharge_amount,
                payment_token=token,
                idempotency_key=idempotency_key,
            )
        except Exception as exc:
            if getattr(exc, "retryable", True):
                raise  # ambiguous: the retry reuses the pending key
            await self._close_episode(ctx, keys, charged=None)
            raise PaymentFailed(f"add-credits refused: {exc}") from exc

        if (tx.status or "").lower() not in ("completed", "succeeded", "success", "paid"):
            await self._close_episode(ctx, keys, charged=None)
            raise PaymentFailed(f"payment {tx.transaction_id} ended {tx.status!r}")
        # Before the episode closes: a crash in between retries with the same key, and
        # the record (keyed by it) is not written twice.
        await record_charge(
            ctx.redis,
            Keys(prefix=ctx.settings.key_prefix),
            session_id=session_id,
            idempotency_key=idempotency_key,
            transaction_id=tx.transaction_id,
            amount=cfg.recharge_amount,
            currency=cfg.recharge_currency,
            ttl_seconds=cfg.recharge_record_ttl_seconds,
        )
        await self._close_episode(ctx, keys, charged=cfg.recharge_amount)
        ctx.log.info(
            "recharge.charged",
            transaction_id=tx.transaction_id,
            minutes_added=tx.minutes_added,
            amount=cfg.recharge_amount,
            currency=cfg.recharge_currency,
            idempotency_key=idempotency_key,
        )

    async def _close_episode(
        self, ctx: Context, keys: dict[str, str], *, charged: float | None
    ) -> None:
        async with ctx.redis.pipeline(transaction=True) as pipe:
            pipe.incr(keys["episode"])
            pipe.delete(keys["pending"])
            if charged is not None:
                pipe.hincrby(keys["daily"], "count", 1)
                pipe.hincrbyfloat(keys["daily"], "amount", charged)
            else:
                pipe.hincrby(keys["daily"], "refused", 1)
            pipe.expire(keys["daily"], 2 * 24 * 3600)
            await pipe.execute()
