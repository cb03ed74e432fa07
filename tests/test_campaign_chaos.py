"""A campaign under faults (tests/campaign_chaos.py, small): 40 contacts, worker
processes SIGKILLed while they dial and play, every webhook delivered twice, 5 % of the
sandbox's API answers 503. Checked from the sandbox's own calls: every contact final
with the outcome its number sets, one created call per contact attempt, never more than
max_concurrent calls at once nor calls_per_minute in a minute, nothing left reserved."""

from __future__ import annotations

import pytest

from tests.campaign_chaos import run_chaos

pytestmark = pytest.mark.timeout(120)


async def test_a_campaign_survives_sigkills_redeliveries_and_503s(redis_url):
    result = await run_chaos(redis_url, contacts=40, calls_per_minute=100)
    assert result.problems == [], (result.problems, result.tails)
    assert result.kills >= 4, result.kills  # the faults came while the campaign ran
    assert result.injected_503 > 0
    assert result.seconds < 60, result.seconds
