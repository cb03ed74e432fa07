"""The call quality monitor (agents/quality.py) through the real receiver, workers, Redis
and the sandbox's poor_quality scenario; assertions on what the sandbox received."""

from __future__ import annotations

import asyncio

import pytest
from arq.constants import in_progress_key_prefix

from ringez_worker.sandbox import start_scenario
from tests.agent_stack import agent_stack
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(90)

QUALITY = {"agents_enabled": "quality", "quality_poll_seconds": 0.1}


async def pending_checks(redis_client, settings, call_id: str) -> int:
    """Checks of this call queued and not yet claimed by a worker (a running check stays
    in arq's queue until it finishes, next to the one it scheduled)."""
    jobs = await redis_client.zrange(settings.queue_name, 0, -1)
    mine = [j for j in jobs if j.startswith(f"task:quality.check:{call_id}:".encode())]
    running = [await redis_client.exists(in_progress_key_prefix.encode() + j) for j in mine]
    return sum(1 for r in running if not r)


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
