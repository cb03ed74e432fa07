"""The callback queue under faults (tests/callback_chaos.py, small): two receivers taking
requests over HTTP (each sent twice with its Idempotency-Key), worker processes SIGKILLed
while they assign and dial, every webhook delivered twice. Checked from the sandbox's
own calls: every request done, one created call per assignment, every customer called,
every answered call transferred, no agent over its maximum, every slot freed."""

from __future__ import annotations

import pytest

from tests.callback_chaos import agents_roster, run_chaos

pytestmark = pytest.mark.timeout(240)


async def test_requests_survive_sigkills_and_redeliveries(redis_url, tmp_path):
    result = await run_chaos(redis_url, tmp_path, requests=40, agents=agents_roster(5))
    assert result.problems == [], result
    assert result.kills >= 4, result.kills  # the faults came while requests were worked
