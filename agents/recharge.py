"""Low-balance recharge agent: tops the wallet up, never twice for one low-balance episode.

- A per-session lock in Redis: concurrent `balance.low` events take turns, and each one
  re-reads the balance first, so only the first of them charges.
- A deterministic idempotency key per episode (`recharge:<session>:<n>`), written down
  as "pending" before the charge: a crash or retry after the charge reuses the same key,
  so Ringez answers with the same transaction instead of charging again.
- A balance read can lag behind a charge (replicas, caches). After a successful charge
  the worker writes down when it happened and the charge's own `new_balance`: a
  `balance.low` emitted before that time (plus CLOCK_SKEW_SECONDS) belongs to the charged
  episode and is dropped without a read, and for RECHARGE_SETTLE_SECONDS after the charge
  a read below `new_balance` is taken as stale and `new_balance` counts instead.
- A daily cap per session (count and amount); once hit, no charge and an alert line.
- A refused payment (402 or a failed status) is never retried blindly: the episode is
  closed and the event goes to the failed-events record with the reason.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from ringez_worker.agents.campaign.store import CampaignKeys
from ringez_worker.agents.config import AgentSettings
from ringez_worker.agents.recharge_record import record_charge
from ringez_worker.api.models import WalletBalance
from ringez_worker.handlers import BalanceLow, Context, Router
from ringez_worker.keys import Keys
from ringez_worker.lua import LuaScript

_RELEASE = LuaScript(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


# Long past any skew or settle time someone would configure; then it expires by itself.
_CHARGED_TTL_SECONDS = 2 * 24 * 3600


@dataclass(frozen=True, slots=True)
class _LastCharge:
    """The session's last successful charge, as this worker saw it complete."""

    at: float  # the worker's clock when add-credits answered
    minutes: float | None  # the charge's own new_balance
    key: str  # its idempotency key
    transaction_id: str | None = None  # its transaction ("" in records from before 0.2)

    @classmethod
    def of(cls, raw: dict[bytes, bytes]) -> _LastCharge | None:
        if not raw or b"at" not in raw:
            return None
        minutes = raw.get(b"minutes", b"")
        return cls(
            at=float(raw[b"at"]),
            minutes=float(minutes) if minutes else None,
            key=raw.get(b"key", b"").decode(),
            transaction_id=raw.get(b"tx", b"").decode() or None,
        )

    def as_mapping(self) -> dict[str, str]:
        minutes = "" if self.minutes is None else repr(self.minutes)
        tx = self.transaction_id or ""
        return {"at": repr(self.at), "minutes": minutes, "key": self.key, "tx": tx}

    def shown_by(self, read: WalletBalance) -> bool:
        """True when a balance read already shows this charge as its last transaction:
        the read is not a stale copy from before it, so its minutes are to be believed."""
        shown = (read.last_transaction or {}).get("transaction_id")
        return self.transaction_id is not None and shown == self.transaction_id


# KEYS: lock, pending, episode. ARGV: our lock token, key prefix, ttl, a fresh episode
# name. The pending key of the current episode, written only by the lock's holder; nil if
# we no longer hold it. The episode's name lives EPISODE_TTL_SECONDS after its last use;
# a session idle longer gets a fresh, never-used name, not a count starting again at 0
# (an API that remembers idempotency keys would take `recharge:<session>:0` again as a
# replay and charge nothing).
_PENDING = LuaScript(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local episode = redis.call('GET', KEYS[3])
if not episode then episode = ARGV[4] end
redis.call('SET', KEYS[3], episode, 'EX', ARGV[3])
local key = ARGV[2] .. episode
redis.call('SET', KEYS[2], key, 'EX', ARGV[3])
return key
"""
)
EPISODE_TTL_SECONDS = 7 * 24 * 3600


def _episode_name() -> str:
    """A name no episode of any session had before: milliseconds, then randomness."""
    return f"{time.time_ns() // 1_000_000:x}{secrets.token_hex(4)}"


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
            "charged": f"{base}:charged",
            "daily": f"{base}:daily:{day}",
        }

    async def on_balance_low(self, event: BalanceLow, ctx: Context) -> None:
        session_id = event.data.session_id
        sessions = CampaignKeys(ctx.settings.key_prefix).sessions
        if await ctx.redis.hexists(sessions, session_id):  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            # A campaign's session: its budget is its max_spend_limit, never topped up.
            ctx.log.info("recharge.skipped_campaign_session", session_id=session_id)
            return
        keys = self._keys(ctx.settings.key_prefix, session_id)
        token = ctx.delivery_id
        await self._lock(ctx, keys["lock"], token)
        try:
            await self._recharge(event, ctx, keys)
        finally:
            await _RELEASE(ctx.redis, [keys["lock"]], [token])

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
        async with ctx.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys["pending"])
            pipe.hgetall(keys["charged"])
            pending, charged = await pipe.execute()
        last = _LastCharge.of(charged)
        if pending is None and last is not None and last.transaction_id is None:
            if self._same_episode(event, ctx, last):  # a record without its transaction
                ctx.log.info("recharge.already_charged", charged_key=last.key)
                return
        balance = await ctx.ringez.wallet.balance(session_id)
        minutes = balance.balance.minutes if balance.balance else None
        # A read that shows the last charge is current: a wallet low again is a new
        # episode, however soon after the charge. Only a read that does not show it may
        # be a stale copy, for which the time rules below decide. Before, every
        # balance.low within CLOCK_SKEW_SECONDS (300) of a charge was dropped unread and
        # every read below new_balance within RECHARGE_SETTLE_SECONDS (600) disbelieved:
        # a wallet drained again within minutes was never topped up (the 10k chaos run:
        # 20 of 40 low-balance episodes not charged in time).
        if last is not None and not last.shown_by(balance):
            if pending is None and self._same_episode(event, ctx, last):
                ctx.log.info("recharge.already_charged", charged_key=last.key)
                return
            minutes = self._settled_minutes(ctx, minutes, last)
        if pending is None and minutes is not None and minutes >= cfg.recharge_threshold_minutes:
            ctx.log.info("recharge.not_needed", minutes=minutes)
            return

        if pending is None:
            count, spent = await ctx.redis.hmget(keys["daily"], "count", "amount")  # type: ignore[misc,arg-type]  # redis-py: Awaitable[T] | T; keys: list
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
            idempotency_key = await self._write_pending(ctx, keys, session_id)
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
        new_balance = tx.new_balance.minutes if tx.new_balance else None
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
        await self._close_episode(
            ctx,
            keys,
            charged=cfg.recharge_amount,
            last=_LastCharge(time.time(), new_balance, idempotency_key, tx.transaction_id),
        )
        ctx.log.info(
            "recharge.charged",
            transaction_id=tx.transaction_id,
            minutes_added=tx.minutes_added,
            amount=cfg.recharge_amount,
            currency=cfg.recharge_currency,
            idempotency_key=idempotency_key,
        )

    async def _write_pending(self, ctx: Context, keys: dict[str, str], session_id: str) -> str:
        """Write this episode's idempotency key down, only while we still hold the lock.

        The lock can expire under a long wait (the shared rate limiter may hold a request
        up to a minute): another worker may have charged and closed the episode meanwhile,
        and a key made from the next episode number would charge again."""
        key = await _PENDING(
            ctx.redis,
            [keys["lock"], keys["pending"], keys["episode"]],
            [ctx.delivery_id, f"recharge:{session_id}:", EPISODE_TTL_SECONDS, _episode_name()],
        )
        if key is None:
            raise LockBusy(f"lost the recharge lock for {session_id} before charging")
        return key.decode() if isinstance(key, bytes) else key

    def _same_episode(self, event: BalanceLow, ctx: Context, last: _LastCharge) -> bool:
        """True when `event` was emitted before the last charge (allowing for clock skew
        between Ringez and this worker): the charge already answered it."""
        stamp = event.timestamp
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)  # as the receiver reads naive timestamps
        return stamp.timestamp() < last.at + ctx.settings.clock_skew_seconds

    def _settled_minutes(self, ctx: Context, read: float | None, last: _LastCharge) -> float | None:
        """The balance to believe: within the settle time a read below the charge's own
        new_balance is a stale copy from before the charge."""
        settling = time.time() < last.at + self.config.recharge_settle_seconds
        if not settling or last.minutes is None or (read is not None and read >= last.minutes):
            return read
        ctx.log.info("recharge.balance_unsettled", read=read, charged_new_balance=last.minutes)
        return last.minutes

    async def _close_episode(
        self,
        ctx: Context,
        keys: dict[str, str],
        *,
        charged: float | None,
        last: _LastCharge | None = None,
    ) -> None:
        async with ctx.redis.pipeline(transaction=True) as pipe:
            # The next episode's name, fresh (it was a counter with no TTL: the key stayed
            # for good; tests/test_erase.py checks every key expires or is bounded).
            pipe.set(keys["episode"], _episode_name(), ex=EPISODE_TTL_SECONDS)
            pipe.delete(keys["pending"])
            if charged is not None:
                pipe.hincrby(keys["daily"], "count", 1)
                pipe.hincrbyfloat(keys["daily"], "amount", charged)
            if last is not None:
                pipe.delete(keys["charged"])
                pipe.hset(keys["charged"], mapping=last.as_mapping())
                pipe.expire(keys["charged"], _CHARGED_TTL_SECONDS)
            else:
                pipe.hincrby(keys["daily"], "refused", 1)
            pipe.expire(keys["daily"], 2 * 24 * 3600)
            await pipe.execute()
