"""The three agents, driven by the sandbox's scenarios over real Redis and loopback HTTP;
the assertions are on the requests the sandbox (our local Ringez) received."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ringez_worker.agents import escalation
from ringez_worker.agents.config import AgentSettings
from ringez_worker.api import RingezClient
from ringez_worker.handlers import Context, parse_event
from ringez_worker.logs import get_logger
from ringez_worker.sandbox import start_scenario
from ringez_worker.worker.cli import post_webhook
from ringez_worker.worker.envelope import delivery_id
from tests.agent_stack import agent_stack
from tests.conftest import event_body, wait_for
from tests.processes import run_cli

pytestmark = pytest.mark.timeout(60)


async def queue_empty(redis_client, settings) -> bool:
    return await redis_client.zcard(settings.queue_name) == 0


def drained(redis_client, settings):
    async def check() -> bool:
        return await queue_empty(redis_client, settings)

    return check


async def test_angry_caller_is_transferred_once_despite_duplicates_and_two_workers(
    redis_url, redis_client
):
    async with agent_stack(redis_url, workers=2, duplicate=True) as stack:
        run = start_scenario(stack.sandbox.sandbox, "angry", stack.receiver_url)
        await asyncio.wait_for(run.task, 30)
        await wait_for(drained(redis_client, stack.settings), what="every event handled")

        transfers = stack.transfers(run.call_id)
        assert len(transfers) == 1, transfers
        routed = stack.sandbox.sandbox.routing.route_to
        assert transfers[0]["json"]["parameters"]["transfer_to"] == routed
        assert stack.sandbox.sandbox.state.get_call(run.call_id).transferred_to == routed

        summary = orjson.loads(await redis_client.get(f"rz:summary:{run.call_id}"))
        assert summary["escalated"] == "transferred"
        assert "escalation_request" in summary["intents"]
        assert summary["sentiment"]["min"] <= -0.6
        # Every event really was delivered twice, and the duplicates were answered 200.
        deliveries = [d for e in stack.sandbox.sandbox.events for d in e.deliveries]
        assert sum(d.duplicate for d in deliveries) == len(deliveries) // 2
        # Sequential copies: the first is accepted, its twin is recognised as a duplicate.
        assert {(d.duplicate, d.attempts[-1].status) for d in deliveries} == {
            (False, 202),
            (True, 200),
        }


async def test_calm_caller_is_never_transferred(redis_url, redis_client):
    async with agent_stack(redis_url) as stack:
        run = start_scenario(stack.sandbox.sandbox, "calm", stack.receiver_url)
        await asyncio.wait_for(run.task, 30)
        await wait_for(drained(redis_client, stack.settings), what="every event handled")
        assert stack.transfers(run.call_id) == []
        assert len(stack.requests("/agents/sentiment-analysis")) >= 2
        summary = orjson.loads(await redis_client.get(f"rz:summary:{run.call_id}"))
        assert summary["escalated"] is None
        assert summary["outcome"] == "completed"
        # Live state is gone once the call is summed up.
        assert await redis_client.exists(f"rz:call:{run.call_id}:segments") == 0


async def test_no_agent_available_uses_the_first_fallback(redis_url, redis_client):
    async with agent_stack(redis_url) as stack:
        stack.sandbox.sandbox.routing.agent_available = False
        fallback = stack.sandbox.sandbox.routing.fallback_options[0]["route_to"]
        run = start_scenario(stack.sandbox.sandbox, "angry", stack.receiver_url)
        await asyncio.wait_for(run.task, 30)
        await wait_for(drained(redis_client, stack.settings), what="every event handled")
        transfers = stack.transfers(run.call_id)
        assert [t["json"]["parameters"]["transfer_to"] for t in transfers] == [fallback]


async def test_a_completed_call_is_never_transferred(redis_url, redis_client):
    async with agent_stack(redis_url) as stack:
        sandbox = stack.sandbox.sandbox
        session = sandbox.state.create_session()
        call, _ = sandbox.state.initiate_call(session.session_id, "+15005550006")
        sandbox.state.answer(call)
        sandbox.state.complete_call(call, duration=30)
        secret = stack.settings.webhook_secrets[0]
        ids = {"call_id": call.call_id, "session_id": session.session_id}
        completed = event_body("call.completed", duration=30, cost=0.05, **ids)
        await post_webhook(stack.receiver_url, completed, secret)
        await wait_for(drained(redis_client, stack.settings), what="call.completed handled")
        # A late, furious segment after the end: no transfer may follow.
        late = event_body(
            "transcription.updated",
            text="This is ridiculous, get me a manager now!",
            speaker="caller",
            is_final=True,
            **ids,
        )
        status, _ = await post_webhook(stack.receiver_url, late, secret)
        assert status == 202
        await wait_for(drained(redis_client, stack.settings), what="the late segment handled")
        assert stack.transfers(call.call_id) == []


def _segment_on_a_live_call(stack, text: str) -> tuple[str, bytes]:
    """A call answered in the sandbox, and a final caller segment on it: (call id, body)."""
    sandbox = stack.sandbox.sandbox
    session = sandbox.state.create_session()
    call, _ = sandbox.state.initiate_call(session.session_id, "+15005550006")
    sandbox.state.answer(call)
    body = event_body(
        "transcription.updated",
        text=text,
        speaker="caller",
        is_final=True,
        call_id=call.call_id,
        session_id=session.session_id,
    )
    return call.call_id, body


async def _angry_segment_after_a_dead_attempt(stack, redis_client, state: str):
    """An angry segment whose delivery an earlier, killed attempt left in `state`."""
    call_id, body = _segment_on_a_live_call(stack, "This is ridiculous, get me a manager now!")
    owner = f"{delivery_id(body)}:sentiment"  # the sentiment handler's earlier attempt
    claim = {"delivery_id": delivery_id(body), "owner": owner, "attempt": "killed", "state": state}
    await redis_client.set(f"rz:call:{call_id}:escalation", orjson.dumps(claim), ex=600)
    status, _ = await post_webhook(stack.receiver_url, body, stack.settings.webhook_secrets[0])
    assert status == 202
    await wait_for(drained(redis_client, stack.settings), what="the segment handled")
    record = await redis_client.get(f"rz:call:{call_id}:escalation")
    return call_id, delivery_id(body), orjson.loads(record)


async def test_a_claim_left_before_sending_is_taken_over(redis_url, redis_client):
    # The killed attempt had claimed the call but not sent the transfer: the retry does.
    async with agent_stack(redis_url) as stack:
        call_id, _, claim = await _angry_segment_after_a_dead_attempt(
            stack, redis_client, "claimed"
        )
        assert len(stack.transfers(call_id)) == 1
        assert claim["state"] == "transferred"
        assert claim["attempt"] != "killed"


async def test_a_claim_left_while_sending_goes_to_a_person(redis_url, redis_client):
    # The killed attempt may have transferred: no second transfer, a failed record instead.
    async with agent_stack(redis_url, job_max_tries=5) as stack:
        call_id, did, claim = await _angry_segment_after_a_dead_attempt(
            stack, redis_client, "sending"
        )
        assert stack.transfers(call_id) == []
        assert claim["state"] == "sending"  # left as it was, for the person who checks
        record = orjson.loads(await redis_client.hget("rz:failed", did))
        assert record["attempts"] == 1
        assert any("EscalationUncertain" in r for r in record["handlers"].values())


async def test_a_call_ending_under_a_dead_attempts_claim_marks_it_skipped(redis_url, redis_client):
    # Seen in a CI chaos run: the attempt that claimed was killed, and the caller hung up
    # before its retry came; the claim must not stay `claimed` (a transfer in progress).
    async with agent_stack(redis_url) as stack:
        call_id, _ = _segment_on_a_live_call(stack, "ignored")
        claim = {"delivery_id": "d0", "owner": "d0:sentiment", "attempt": "killed"}
        key = f"rz:call:{call_id}:escalation"
        await redis_client.set(key, orjson.dumps({**claim, "state": "claimed"}), ex=600)
        ended = event_body("call.completed", duration=30, cost=0.05, call_id=call_id)
        await post_webhook(stack.receiver_url, ended, stack.settings.webhook_secrets[0])
        await wait_for(drained(redis_client, stack.settings), what="call.completed handled")
        record = orjson.loads(await redis_client.get(key))
        assert record["state"] == "skipped" and record["attempt"] == "killed"
        assert stack.transfers(call_id) == []
        # A claim that was already sending stays as it is, for the person who checks.
        await redis_client.set(key, orjson.dumps({**claim, "state": "sending"}), ex=600)
        assert await escalation._END_CLAIMED(redis_client, [key], []) == 0


async def test_moving_a_claim_is_safe_to_resend(redis_client):
    # redis-py resends a script whose reply was lost: the second send must agree.
    claim = {"delivery_id": "d", "attempt": "a1", "state": "claimed"}
    await redis_client.set("rz:call:c:escalation", orjson.dumps(claim))
    key = ["rz:call:c:escalation"]
    assert await escalation._MOVE(redis_client, key, ["a1", "claimed", "sending"]) == 1
    assert await escalation._MOVE(redis_client, key, ["a1", "claimed", "sending"]) == 1
    assert await escalation._MOVE(redis_client, key, ["a2", "claimed", "sending"]) == 0
    stored = orjson.loads(await redis_client.get("rz:call:c:escalation"))
    assert (stored["attempt"], stored["state"]) == ("a1", "sending")


async def test_two_handlers_of_one_delivery_escalating_at_once_transfer_once(
    redis_url, redis_client
):
    # Sentiment and support's intent can both escalate the same segment at the same
    # time: one transfers, the other sees the claim held; neither takes the other's over.
    async with agent_stack(redis_url) as stack:
        call_id, body = _segment_on_a_live_call(stack, "get me a manager")
        event = parse_event(orjson.loads(body), delivery_id(body))
        ringez = RingezClient.from_settings(stack.settings, redis=redis_client)
        ctx = Context(
            delivery_id=delivery_id(body),
            redis=redis_client,
            settings=stack.settings,
            log=get_logger("test"),
            client=ringez,
        )
        agent = escalation.EscalationAgent(AgentSettings(_env_file=None))
        try:
            results = await asyncio.gather(
                agent.escalate(event, ctx, reason="sentiment", source="sentiment"),
                agent.escalate(event, ctx, reason="intent", source="support.intent"),
            )
        finally:
            await ringez.aclose()
        assert sorted(r is None for r in results) == [False, True]
        assert len(stack.transfers(call_id)) == 1


def low_balance_event(session_id: str, minutes: float, n: int) -> bytes:
    return event_body(
        "balance.low",
        call_id=f"call_low_{n}",
        session_id=session_id,
        balance={"minutes": minutes, "value": minutes * 0.05, "currency": "USD"},
    )


async def test_ten_concurrent_balance_low_events_give_one_charge(redis_url, redis_client):
    async with agent_stack(redis_url, workers=2) as stack:
        session = stack.sandbox.sandbox.state.create_session(initial_minutes=2)
        secret = stack.settings.webhook_secrets[0]
        bodies = [low_balance_event(session.session_id, 2, n) for n in range(10)]
        answers = await asyncio.gather(
            *(post_webhook(stack.receiver_url, b, secret) for b in bodies)
        )
        assert [status for status, _ in answers] == [202] * 10
        await wait_for(drained(redis_client, stack.settings), what="every balance.low handled")
        charges = stack.charges(session.session_id)
        assert len(charges) == 1, charges
        assert stack.sandbox.sandbox.state.get_session(session.session_id).wallet.minutes > 2


async def test_the_daily_cap_stops_the_fourth_episode(redis_url, redis_client):
    async with agent_stack(redis_url) as stack:
        state = stack.sandbox.sandbox.state
        session = state.create_session(initial_minutes=1)
        secret = stack.settings.webhook_secrets[0]
        for episode in range(4):
            state.get_session(session.session_id).wallet.minutes = 1.0  # drained again
            # An hour since the last charge (moved back, not slept through): a new episode.
            await _age_last_charge(redis_client, session.session_id, 3600)
            body = low_balance_event(session.session_id, 1, episode)
            status, _ = await post_webhook(stack.receiver_url, body, secret)
            assert status == 202
            await wait_for(drained(redis_client, stack.settings), what=f"episode {episode}")
        charges = stack.charges(session.session_id)
        assert len(charges) == 3
        # Three episodes, three distinct keys: each charge belongs to its own episode.
        assert len({c["json"]["idempotency_key"] for c in charges}) == 3
        assert state.get_session(session.session_id).wallet.minutes == 1.0


async def _age_last_charge(redis_client, session_id: str, seconds: float) -> None:
    key = f"rz:recharge:{session_id}:charged"
    at = await redis_client.hget(key, "at")
    if at is not None:
        await redis_client.hset(key, "at", float(at) - seconds)


async def test_a_declined_payment_is_not_retried_and_is_recorded(redis_url, redis_client):
    config = {"recharge_payment_token": "tok_declined"}
    async with agent_stack(redis_url, agent_config=config, job_max_tries=5) as stack:
        session = stack.sandbox.sandbox.state.create_session(initial_minutes=1)
        body = low_balance_event(session.session_id, 1, 0)
        status, _ = await post_webhook(stack.receiver_url, body, stack.settings.webhook_secrets[0])
        assert status == 202

        async def recorded() -> bool:
            return await redis_client.hexists("rz:failed", delivery_id(body))

        await wait_for(recorded, what="the failed-events record")
        await wait_for(drained(redis_client, stack.settings), what="the job to end")
        assert len(stack.charges(session.session_id)) == 1
        record = orjson.loads(await redis_client.hget("rz:failed", delivery_id(body)))
        assert record["attempts"] == 1
        (reason,) = record["handlers"].values()
        assert "PaymentFailed" in reason and "402" in reason


async def test_dry_run_logs_instead_of_charging(redis_url, redis_client):
    async with agent_stack(redis_url, agent_config={"recharge_dry_run": True}) as stack:
        session = stack.sandbox.sandbox.state.create_session(initial_minutes=1)
        body = low_balance_event(session.session_id, 1, 0)
        await post_webhook(stack.receiver_url, body, stack.settings.webhook_secrets[0])
        await wait_for(drained(redis_client, stack.settings), what="balance.low handled")
        assert stack.charges(session.session_id) == []
        assert len(stack.requests("/wallet/balance")) == 1


async def test_user_intent_handlers_run_beside_the_built_in_ones(redis_url, redis_client):
    from ringez_worker.handlers import Router

    seen: list[tuple[str, str]] = []
    users = Router()

    @users.on_intent("account_inquiry")
    async def note_inquiry(event, intent, ctx) -> None:
        seen.append((event.call_id, intent.intent))

    async with agent_stack(redis_url, intents=users) as stack:
        run = start_scenario(stack.sandbox.sandbox, "angry", stack.receiver_url)
        await asyncio.wait_for(run.task, 30)
        await wait_for(drained(redis_client, stack.settings), what="every event handled")
    assert seen == [(run.call_id, "account_inquiry")]
    # The built-in account answer read the wallet and spoke the answer.
    assert stack.requests("/wallet/balance")
    assert stack.requests("/agents/voice-synthesis")


async def test_a_payment_token_the_api_echoes_stays_out_of_the_failed_record(
    redis_url, redis_client
):
    # The token lives in AgentSettings, not Settings: the one redactor must know it too.
    token = "tok_declined_s3cr3t_5e81"
    async with agent_stack(redis_url, agent_config={"recharge_payment_token": token}) as stack:
        session = stack.sandbox.sandbox.state.create_session(initial_minutes=1)
        body = low_balance_event(session.session_id, 1, 0)
        status, _ = await post_webhook(stack.receiver_url, body, stack.settings.webhook_secrets[0])
        assert status == 202

        async def recorded() -> bool:
            return await redis_client.hexists("rz:failed", delivery_id(body))

        await wait_for(recorded, what="the failed-events record")
        assert stack.charges(session.session_id)[0]["json"]["payment_token"] == token
        raw = await redis_client.hget("rz:failed", delivery_id(body))
        assert token not in raw.decode()
        assert "[redacted]" in raw.decode()
        shown = run_cli("failed", "show", delivery_id(body)[:12], env={"REDIS_URL": redis_url})
        assert shown.returncode == 0, shown.stderr
        assert "PaymentFailed" in shown.stdout
        assert token not in shown.stdout + shown.stderr


async def test_only_a_404_naming_the_call_reads_as_no_transcript(redis_url, redis_client):
    from ringez_worker.sandbox.config import FaultConfig

    # The first transcript request gets a 404 that is not "no such call" (a path the
    # API does not serve); the second is the sandbox's own 404 for an unknown call.
    faults = FaultConfig(fail_next=[404], path_prefix="/api/v1/transcripts")
    async with agent_stack(redis_url, sandbox_config={"faults": faults}) as stack:
        secret = stack.settings.webhook_secrets[0]
        odd = event_body("call.completed", duration=3, call_id="call_odd404")
        unknown = event_body("call.completed", duration=3, call_id="call_unknown")
        assert (await post_webhook(stack.receiver_url, odd, secret))[0] == 202
        await wait_for(drained(redis_client, stack.settings), what="the first completion")
        assert (await post_webhook(stack.receiver_url, unknown, secret))[0] == 202
        await wait_for(drained(redis_client, stack.settings), what="the second completion")
        assert len(stack.requests("/transcripts/call_odd404")) == 1
        assert await redis_client.hexists("rz:failed", delivery_id(odd))
        assert not await redis_client.hexists("rz:failed", delivery_id(unknown))
        assert await redis_client.exists("rz:summary:call_unknown")
