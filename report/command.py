"""`ringez-worker report`: a day's report to files, or the newest kept one (`--latest`)."""

from __future__ import annotations

import asyncio
import sys
from datetime import date, datetime
from pathlib import Path

from ringez_worker.keys import Keys
from ringez_worker.redis_conn import redis_from_settings
from ringez_worker.report.settings import ReportSettings, load_report_settings, require_matplotlib
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


def main(
    settings: Settings, day: str | None, session_id: str | None, out: str, *, latest: bool
) -> int:
    """The CLI command: one line on stdout when done, one on stderr when not."""
    from redis.exceptions import RedisError

    from ringez_worker.api.errors import RingezError

    report = load_report_settings()
    if not latest:
        require_matplotlib()
    the_day = None
    if day:
        try:
            the_day = datetime.strptime(day, "%Y-%m-%d").date()
        except ValueError:
            print("ringez-worker: --date must be YYYY-MM-DD", file=sys.stderr)
            return 2
    try:
        code, line = asyncio.run(
            report_to_files(
                settings, report, day=the_day, session_id=session_id, out=Path(out), latest=latest
            )
        )
    except (RedisError, OSError) as exc:
        code, line = 1, f"report: Redis or the output directory failed: {type(exc).__name__}"
    except RingezError as exc:
        code, line = 1, f"report: the Ringez API failed: {exc}"
    print(line if not code else f"ringez-worker: {line}", file=sys.stderr if code else sys.stdout)
    return code
