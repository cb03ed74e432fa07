"""The quality monitor's lines in `ringez-worker dev`'s "what happened" summary."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ringez_worker.keys import Keys


async def quality_lines(
    redis: Redis, prefix: str, call_id: str, requests: list[dict[str, Any]]
) -> list[str]:
    """Breaches, the issue report and the codec switch of one call; [] if unmonitored."""
    raw = await redis.hgetall(Keys(prefix=prefix).quality(call_id))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    record = {k.decode(): v.decode() for k, v in raw.items()}
    if not record:
        return []
    breaches = {k.removeprefix("breach:"): v for k, v in record.items() if k.startswith("breach:")}
    lines = [
        f"    quality   samples={record.get('samples')} mos_min={record.get('mos_min')} "
        f"packet_loss_max={record.get('packet_loss_max')} "
        f"latency_max_ms={record.get('latency_max_ms')}",
        f"    quality   breaches {_pairs(breaches) or '-'}",
    ]
    for r in requests:
        body = r.get("json") or {}
        if r["path"].endswith(f"/calls/{call_id}/issues"):
            lines.append(f"    quality   reported issue (status {r.get('status')})")
        elif (
            r["path"].endswith(f"/calls/{call_id}/actions") and body.get("action") == "switch_codec"
        ):
            codec = (body.get("parameters") or {}).get("codec")
            lines.append(f"    quality   switched codec to {codec} (status {r.get('status')})")
    return lines


def _pairs(breaches: dict[str, str]) -> str:
    return ", ".join(f"{level}->{action}" for level, action in sorted(breaches.items()))
