"""The call quality monitor (agents/quality.py) through the real receiver, workers, Redis
and the sandbox's poor_quality scenario; assertions on what the sandbox received."""

from __future__ import annotations

import asyncio

import pytest
from arq.constants import in_progress_key_prefix

from ringez_worker.api.ratelimit import RedisRateLimiter
from ringez_worker.sandbox import start_scenario
from ringez_worker.worker.cli import post_webhook
from tests.agent_stack import agent_stack
from tests.conftest import SECRET, event_body, wait_for

pytestmark = pytest.mark.timeout(90)

QUALITY = {"agents_enabled": "quality", "quality_poll_seconds": 0.1}


# Atomic, so a check finishing between reading the queue and its in-progress key is not
# counted as pending.
_PENDING = """
local n = 0
for _, j in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(j, 1, #ARGV[1]) == ARGV[1] and redis.call('EXISTS', ARGV[2] .. j) == 0 then
    n = n + 1
  end
end
return n
"""


async def pending_checks(redis_client, settings, call_id: str) -> int:
    """Checks of this call queued and not yet claimed by a worker (a running check stays
    in arq's queue until it finishes, next to the one it scheduled)."""
    prefix = f"task:quality.check:{call_id}:"
    return int(
        await redis_client.eval(_PENDING, 1, settings.queue_name, prefix, in_progress_key_prefix)
    )


async def test_poor_quality_reports_once_and_switches_codec_once_with_one_pending_check(
    redis_url, redis_client
):
    # Every event delivered twice, to two workers: redelivered call.answered included.
    async with agent_stack(redis_url, workers=2, duplicate=True, agent_config=QUALITY) as stack:
        run = start_scenario(stack.sandbox.sandbox, "poor_quality", stack.receiver_url)
        most = 0
        while not run.done:
            most = max(most, await pending_checks(redis_client, stack.settings, run.call_id))
            await asyncio.sleep(0.01)  # sampling the queue, not synchronising
        await run.task
        call = stack.sandbox.sandbox.state.get_call(run.call_id)
        assert call.codec == "OPUS"
        assert len(call.issues) == 1, call.issues
        switches = stack.requests(f"/calls/{run.call_id}/actions", action="switch_codec")
        assert len(switches) == 1, switches
        assert 1 <= most <= 1, most
        # The call ended: the last check finds it so and schedules nothing.
        await wait_for(
            lambda: _zero(redis_client, stack.settings, run.call_id),
            deadline_s=20,
            what="no check pending after the call ended",
        )
        record = await redis_client.hgetall(f"rz:call:{run.call_id}:quality:record")
        assert float(record[b"mos_min"]) <= 2.5
        assert float(record[b"packet_loss_max"]) > 0.05
        assert record[b"breach:warning"] == b"report_issue"
        assert record[b"breach:critical"] == b"switch_codec"
        assert int(await redis_client.ttl(f"rz:call:{run.call_id}:quality:record")) > 0


async def _zero(redis_client, settings, call_id: str) -> bool:
    return await pending_checks(redis_client, settings, call_id) == 0


async def test_redelivered_call_answered_starts_no_second_chain_of_checks(redis_url, redis_client):
    async with agent_stack(redis_url, workers=2, agent_config=QUALITY) as stack:
        run = start_scenario(stack.sandbox.sandbox, "poor_quality", stack.receiver_url)
        call = stack.sandbox.sandbox.state.get_call(run.call_id)
        await wait_for(lambda: call.status == "in-progress", deadline_s=20, what="answered")
        most, sent = 0, 0
        while not run.done:
            if sent < 8:  # call.answered again, as new deliveries (distinct bodies)
                body = event_body(
                    "call.answered", call_id=run.call_id, session_id=run.session_id, again=sent
                )
                status, _ = await post_webhook(stack.receiver_url, body, SECRET)
                assert status == 202
                sent += 1
            most = max(most, await pending_checks(redis_client, stack.settings, run.call_id))
            await asyncio.sleep(0.01)  # sampling the queue, not synchronising
        assert most == 1
        assert len(call.issues) == 1
        switches = stack.requests(f"/calls/{run.call_id}/actions", action="switch_codec")
        assert len(switches) == 1, switches


async def test_under_the_budget_floor_a_new_call_is_not_polled(redis_url, redis_client):
    limit = 20
    async with agent_stack(redis_url, agent_config=QUALITY, ringez_rate_limit=limit) as stack:
        limiter = RedisRateLimiter.for_api_key(
            redis_client, "sk_test_agents", prefix="rz", limit=limit, period=3600.0
        )
        for _ in range(17):  # 85 % of the window spent: 15 % left, under the 20 % floor
            await limiter.acquire()
        run = start_scenario(stack.sandbox.sandbox, "poor_quality", stack.receiver_url)
        call = stack.sandbox.sandbox.state.get_call(run.call_id)
        await wait_for(lambda: bool(call.quality), deadline_s=20, what="answered, degrading")
        # call.answered handled (the queue empty): it scheduled no check.
        await wait_for(
            lambda: _empty(redis_client, stack.settings), deadline_s=20, what="queue drained"
        )
        assert stack.requests(f"/calls/{run.call_id}") == []
        assert stack.sandbox.sandbox.state.get_call(run.call_id).issues == []
        assert not await redis_client.exists(f"rz:call:{run.call_id}:quality:started")


async def _empty(redis_client, settings) -> bool:
    return await redis_client.zcard(settings.queue_name) == 0
