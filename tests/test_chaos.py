"""A small chaos run in CI: 300 events through the real receiver and two worker processes
on a real Redis, workers SIGKILLed every two seconds, Redis SIGKILLed and restarted once,
completion-record writes refused for two seconds (ACL), Redis full for two seconds
(maxmemory under what it holds), 20% of API calls answering 503 and 5% 429. Nothing
acknowledged may be lost, no handler may run again after its recorded success, no call
transferred twice, no episode charged twice. The full run is `python -m bench.chaos`
(bench/chaos/__init__.py)."""

from __future__ import annotations

import pytest

from bench.chaos.run import ChaosConfig, run_chaos

pytestmark = pytest.mark.timeout(240)

SMALL = ChaosConfig(
    events=300,
    workers=2,
    kill_every=2.0,
    seed=7,
    rate=30.0,
    lease_seconds=2.0,
    angry_every=60,
    low_balance_every=100,
    episodes=2,
    angry_hold_seconds=4.0,
    episode_wait_seconds=30.0,
    chaos_tail_seconds=5.0,
    max_seconds=150.0,
)


async def test_small_chaos_run_loses_nothing_and_repeats_no_side_effect() -> None:
    lines: list[str] = []
    result = await run_chaos(SMALL, say=lines.append)
    report = result.render() + "\n" + "\n".join(lines)
    assert result.ok, report
    # The chaos really happened...
    assert result.kills >= 1, report
    assert result.redis_restarts == 1, report
    assert result.done_fault_seconds >= SMALL.done_fault_seconds, report
    assert result.full_seconds >= SMALL.full_redis_seconds, report
    assert result.readyz_when_full == 503, report  # the receiver says why it refuses
    assert result.injected.get(503, 0) > 0 and result.injected.get(429, 0) > 0, report
    assert result.redeliveries > 0, report
    # ...and every count the verdict rests on is what it should be.
    assert result.acknowledged == result.handled == SMALL.events, report
    assert result.lost == [] and result.exact_duplicates == [], report
    assert result.effect_duplicates_unexplained == [], report
    assert result.max_transfers <= 1 and result.max_charges <= 1, report
    # The agents acted, so their at-most-once counts are not vacuous.
    assert result.transfers_per_call.get(1, 0) >= 1, report
    assert result.charges_per_episode.get(1, 0) >= 1, report
