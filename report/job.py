"""One scheduled report: gather the day, render it in a thread, keep it in Redis."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from ringez_worker.api.client import RingezClient
from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger
from ringez_worker.report.data import gather_day
from ringez_worker.report.page import render_report
from ringez_worker.report.schedule import claim_name, report_day
from ringez_worker.report.settings import ReportSettings
from ringez_worker.report.store import save_report

log = get_logger("ringez.report")


async def generate_and_keep(
    ringez: RingezClient,
    redis: Redis,
    keys: Keys,
    report: ReportSettings,
    scheduled: datetime,
    on_done: Any = None,
) -> str:
    """Render the report due at `scheduled` and keep it; returns its id.

    `on_done(outcome)` is told "generated" or "failed" (the worker's metrics)."""
    day = report_day(scheduled, report.report_day)
    started = time.monotonic()
    try:
        data = await gather_day(ringez, redis, keys, day, report.tz, report.report_session_id)
        # matplotlib is CPU-bound: a thread keeps the worker's event loop answering jobs.
        rendered = await asyncio.to_thread(render_report, data)
        report_id = f"{day.isoformat()}@{claim_name(scheduled)}"
        meta = {
            "day": day.isoformat(),
            "timezone": report.report_timezone,
            "session_id": report.report_session_id,
            "scheduled_for": claim_name(scheduled),
            "generated_at": data.generated_at,
            "total_calls": data.total_calls,
        }
        await save_report(
            redis,
            keys,
            report_id,
            meta,
            rendered.html,
            keep=report.report_keep,
            max_bytes=report.report_max_bytes,
        )
    except Exception:
        if on_done is not None:
            on_done("failed")
        raise
    if on_done is not None:
        on_done("generated")
    log.info(
        "report.generated",
        report_id=report_id,
        calls=data.total_calls,
        bytes=len(rendered.html),
        seconds=round(time.monotonic() - started, 3),
    )
    return report_id
