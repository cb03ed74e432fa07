"""Recharge against a wallet whose balance read lags behind its charges (issue 12, item 6):
the real receiver, two workers, Redis and the sandbox as Ringez over loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from ringez_worker.agents.config import AgentSettings
from ringez_worker.agents.recharge import LockBusy, RechargeAgent
from ringez_worker.handlers import Context
from ringez_worker.logs import get_logger
from ringez_worker.sandbox.config import FaultConfig
from ringez_worker.worker.cli import build_event, post_webhook
from ringez_worker.worker.envelope import delivery_id
from tests.agent_stack import agent_stack
from tests.test_agents import drained

pytestmark = pytest.mark.timeout(60)

LAG = {"faults": FaultConfig(balance_lag_seconds=600)}


def balance_low(session_id: str, n: int, at: datetime) -> bytes:
    data = {
        "call_id": f"call_lag_{n}",
        "session_id": session_id,
        "balance": {"minutes": 2, "value": 0.1, "currency": "USD"},
    }
    stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return build_event("balance.low", data, timestamp=stamp)


async def test_a_lagging_balance_read_does_not_charge_one_episode_twice(redis_url, redis_client):
    async with agent_stack(redis_url, workers=2, sandbox_config=LAG) as stack:
        state = stack.sandbox.sandbox.state
        session = state.create_session(initial_minutes=2)
        secret = stack.settings.webhook_secrets[0]
        # Five events of one episode, all emitted before any charge, each delivered twice.
        emitted = datetime.now(UTC) - timedelta(seconds=1)
        bodies = [balance_low(session.session_id, n, emitted) for n in range(5)]
        answers = await asyncio.gather(
            *(post_webhook(stack.receiver_url, b, secret) for b in bodies + bodies)
        )
        assert sorted(status for status, _ in answers) == [200] * 5 + [202] * 5
        await stack_drained(redis_client, stack)

        charges = stack.charges(session.session_id)
        assert len(charges) == 1, [c["json"]["idempotency_key"] for c in charges]
        assert state.get_session(session.session_id).wallet.minutes == 62
        # The read really lagged: the wallet still reads as it was before the charge.
        wallet, _ = state.lagged_wallet(state.get_session(session.session_id), 600)
        assert wallet["minutes"] == 2


async def test_an_episode_after_the_charge_charges_again_once_the_read_settles(
    redis_url, redis_client
):
    # A balance.low emitted well after the charge is a new episode; within the settle time
    # the charge's own new_balance counts, after it the (settled) read does.
    config = {"recharge_settle_seconds": 60}
    async with agent_stack(
        redis_url, agent_config=config, sandbox_config=LAG, clock_skew_seconds=5
    ) as stack:
        state = stack.sandbox.sandbox.state
        session = state.create_session(initial_minutes=2)
        secret = stack.settings.webhook_secrets[0]
        first = balance_low(session.session_id, 0, datetime.now(UTC))
        assert (await post_webhook(stack.receiver_url, first, secret))[0] == 202
        await stack_drained(redis_client, stack)
        assert len(stack.charges(session.session_id)) == 1

        # The charge was 30 s ago (moved back in Redis, not slept through): a balance.low
        # emitted now is past the skew, but the read has not settled yet.
        key = f"rz:recharge:{session.session_id}:charged"
        at = float(await redis_client.hget(key, "at"))
        await redis_client.hset(key, "at", at - 30)
        early = balance_low(session.session_id, 1, datetime.now(UTC))
        assert (await post_webhook(stack.receiver_url, early, secret))[0] == 202
        await stack_drained(redis_client, stack)
        assert len(stack.charges(session.session_id)) == 1

        # The settle time is over and the wallet really is low again: a new episode, a
        # second charge with its own key.
        await redis_client.hset(key, "at", at - 120)
        state.get_session(session.session_id).wallet.minutes = 1
        stack.sandbox.sandbox.faults.configure(FaultConfig())
        settled = balance_low(session.session_id, 2, datetime.now(UTC))
        assert (await post_webhook(stack.receiver_url, settled, secret))[0] == 202
        await stack_drained(redis_client, stack)
        charges = stack.charges(session.session_id)
        assert len({c["json"]["idempotency_key"] for c in charges}) == 2


async def stack_drained(redis_client, stack) -> None:
    from tests.conftest import wait_for

    await wait_for(drained(redis_client, stack.settings), what="every balance.low handled")


async def test_a_worker_that_lost_the_lock_writes_no_episode_key(redis_url, redis_client):
    # Its lock expired while it waited (for the rate limiter, say) and another worker
    # holds it now: it must not write a key for the episode, nor charge.
    async with agent_stack(redis_url) as stack:
        session = stack.sandbox.sandbox.state.create_session(initial_minutes=2)
        body = balance_low(session.session_id, 0, datetime.now(UTC))
        ctx = Context(
            delivery_id=delivery_id(body),
            redis=redis_client,
            settings=stack.settings,
            log=get_logger("test"),
            client=None,
        )
        agent = RechargeAgent(AgentSettings(_env_file=None))
        keys = agent._keys("rz", session.session_id)
        await redis_client.set(keys["lock"], "another-delivery", px=30_000)
        with pytest.raises(LockBusy):
            await agent._write_pending(ctx, keys, session.session_id)
        assert await redis_client.exists(keys["pending"]) == 0
        # Holding it, the key is the current episode's.
        await redis_client.set(keys["lock"], ctx.delivery_id, px=30_000)
        await redis_client.set(keys["episode"], 4)
        key = await agent._write_pending(ctx, keys, session.session_id)
        assert key == f"recharge:{session.session_id}:4"
        assert await redis_client.get(keys["pending"]) == key.encode()


async def test_a_wallet_drained_again_right_after_a_charge_is_charged_again(
    redis_url, redis_client
):
    # Before the fix a balance.low within CLOCK_SKEW_SECONDS (300) of a charge was dropped
    # unread, and a read under new_balance within RECHARGE_SETTLE_SECONDS (600) was taken
    # as stale: a wallet drained again within minutes was never topped up.
    async with agent_stack(redis_url, workers=2) as stack:
        state = stack.sandbox.sandbox.state
        session = state.create_session(initial_minutes=2)
        secret = stack.settings.webhook_secrets[0]
        first = balance_low(session.session_id, 0, datetime.now(UTC))
        assert (await post_webhook(stack.receiver_url, first, secret))[0] == 202
        await stack_drained(redis_client, stack)
        assert len(stack.charges(session.session_id)) == 1

        # Redelivered copies of the first episode's events, now: the read shows the
        # charge and the topped-up wallet, so nothing more is charged.
        again = [balance_low(session.session_id, n, datetime.now(UTC)) for n in (10, 11)]
        for body in again:
            assert (await post_webhook(stack.receiver_url, body, secret))[0] == 202
        await stack_drained(redis_client, stack)
        assert len(stack.charges(session.session_id)) == 1

        # Calls drain it again at once: a new episode, its own key, one more charge.
        state.get_session(session.session_id).wallet.minutes = 1
        bodies = [balance_low(session.session_id, n, datetime.now(UTC)) for n in (20, 21, 22)]
        answers = await asyncio.gather(
            *(post_webhook(stack.receiver_url, b, secret) for b in bodies + bodies)
        )
        assert sorted(status for status, _ in answers) == [200] * 3 + [202] * 3
        await stack_drained(redis_client, stack)
        charges = stack.charges(session.session_id)
        assert len(charges) == 2
        assert len({c["json"]["idempotency_key"] for c in charges}) == 2
