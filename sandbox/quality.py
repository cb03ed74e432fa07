"""The `poor_quality` scenario's middle: a connected call whose quality degrades.

MOS falls under the warning threshold, then under the critical one with packet loss and
latency spiking; each stage holds until the monitor has acted on it (an issue reported,
a codec switched) or `escalation_wait_seconds` pass, so it works at any poll interval.
After a codec switch the call recovers, then completes.
"""

from __future__ import annotations

from ringez_worker.sandbox.engine import Sandbox
from ringez_worker.sandbox.models import Call

GOOD = {"mos_score": 4.2, "packet_loss": 0.01, "latency_ms": 80.0}
WARNING = {"mos_score": 3.1, "packet_loss": 0.02, "latency_ms": 140.0}
CRITICAL = {"mos_score": 2.1, "packet_loss": 0.12, "latency_ms": 420.0}


async def degrade(sb: Sandbox, call: Call) -> bool:
    """Play the stages on a connected call; False if it was hung up meanwhile."""
    wait = sb.config.escalation_wait_seconds
    call.quality = dict(GOOD)
    if await sb.ended_within(call, sb.config.pacing_seconds):
        return False
    call.quality = dict(WARNING)
    call.touch()
    await sb.wait_for(call, lambda c: bool(c.issues) or not c.active, wait)
    if not call.active:
        return False
    call.quality = dict(CRITICAL)
    call.touch()
    await sb.wait_for(call, lambda c: c.codec is not None or not c.active, wait)
    if not call.active:
        return False
    if call.codec is not None:
        call.quality = dict(GOOD)  # the new codec helped
    return not await sb.ended_within(call, sb.config.pacing_seconds)
