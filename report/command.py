"""`ringez-worker report`: a day's report to files, or the newest kept one (`--latest`)."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from pathlib import Path

from ringez_worker.keys import Keys
from ringez_worker.redis_conn import redis_from_settings
from ringez_worker.report.settings import ReportSettings
from ringez_worker.report.store import latest_report, rendered_from_record, write_files
from ringez_worker.settings import Settings, require


def today(report: ReportSettings) -> date:
    return datetime.now(report.tz).date()


async def report_to_files(
    settings: Settings,
    report: ReportSettings,
    *,
    day: date | None,
    session_id: str | None,
    out: Path,
    latest: bool,
) -> tuple[int, str]:
    """Write the report's files; (exit code, the line to print)."""
    from ringez_worker.api.client import RingezClient
    from ringez_worker.report.data import gather_day
    from ringez_worker.report.page import render_report

    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    redis = redis_from_settings(settings)
    try:
        if latest:
            record = await latest_report(redis, keys)
            if record is None:
                return 1, "no report kept in Redis yet (is REPORT_CRON set on the workers?)"
            stem = f"report-{record.get('day', 'latest')}"
            paths = write_files(out, stem, rendered_from_record(record))
            return 0, f"wrote {paths[0]} and {len(paths) - 1} charts (kept report {record['id']})"
        require(settings, "ringez_api_key")
        the_day = day or today(report)
        async with RingezClient.from_settings(settings, redis=redis) as ringez:
            data = await gather_day(ringez, redis, keys, the_day, report.tz, session_id)
        rendered = await asyncio.to_thread(render_report, data)
        suffix = f"-{session_id}" if session_id else ""
        paths = write_files(out, f"report-{the_day.isoformat()}{suffix}", rendered)
        return 0, (
            f"wrote {paths[0]} and {len(paths) - 1} charts "
            f"({data.total_calls} calls on {the_day.isoformat()}, {report.report_timezone})"
        )
    finally:
        await redis.aclose()
