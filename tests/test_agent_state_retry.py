"""A handler that fails after appending agent state, then succeeds on its retry, leaves
each segment, intent and sentiment once (issue 12, item 7). Real receiver, worker,
Redis, and the sandbox as Ringez with injected 503s."""

from __future__ import annotations

import orjson
import pytest

from ringez_worker.sandbox.config import FaultConfig
from ringez_worker.worker.cli import post_webhook
from tests.agent_stack import agent_stack
from tests.conftest import wait_for
from tests.test_agents import _segment_on_a_live_call, drained

pytestmark = pytest.mark.timeout(60)

# Every attempt of one API call (the client tries 4 times), so the handler itself fails.
FAIL_ONE_CALL = [503] * 4


@pytest.mark.parametrize(
    ("text", "failing", "intents", "sentiments"),
    [
        # Fails after the segment is appended, before the intent is known.
        ("What is my balance?", "agents/intent-detection", ["account_inquiry"], [0.0]),
        # Fails after the intent is appended (the account answer's speech).
        ("What is my balance?", "agents/voice-synthesis", ["account_inquiry"], [0.0]),
        # Fails after the sentiment is appended (routing the escalation it asks for).
        ("This is terrible.", "agents/call-routing", None, [-0.7]),
    ],
    ids=["intent-detection", "after-intent", "after-sentiment"],
)
async def test_a_retried_handler_appends_its_state_once(
    redis_url, redis_client, text, failing, intents, sentiments
):
    async with agent_stack(redis_url) as stack:
        sandbox = stack.sandbox.sandbox
        sandbox.faults.configure(
            FaultConfig(fail_next=FAIL_ONE_CALL, path_prefix=f"/api/v1/{failing}")
        )
        call_id, body = _segment_on_a_live_call(stack, text)
        status, _ = await post_webhook(stack.receiver_url, body, stack.settings.webhook_secrets[0])
        assert status == 202

        def retried_through() -> bool:
            # Every injected 503 was answered, and then the retry's call got through.
            answered = [r for r in stack.requests(failing) if r["status"] == 200]
            return sandbox.faults.injected[503] == len(FAIL_ONE_CALL) and bool(answered)

        await wait_for(retried_through, what=f"a 503 run of {failing}, then its retry")
        await wait_for(drained(redis_client, stack.settings), what="the retry to finish")
        assert await redis_client.hlen("rz:failed") == 0

        state = f"rz:call:{call_id}"
        segments = [orjson.loads(s) for s in await redis_client.lrange(f"{state}:segments", 0, -1)]
        assert [s["text"] for s in segments] == [text]
        if intents is not None:
            assert [i.decode() for i in await redis_client.lrange(f"{state}:intents", 0, -1)] == (
                intents
            )
        # A retry asks intent detection with the same context as the first attempt did.
        contexts = [r["json"]["context"] for r in stack.requests("agents/intent-detection")]
        assert contexts and all(c == {"previous_intents": []} for c in contexts), contexts
        scores = [float(s) for s in await redis_client.lrange(f"{state}:sentiments", 0, -1)]
        assert scores == sentiments
