"""The worker's side of REPORT_CRON: validated at start-up, one scheduler task per worker."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger
from ringez_worker.report.settings import ReportSettings, load_report_settings, require_matplotlib
from ringez_worker.settings import Settings

log = get_logger("ringez.worker")


def report_settings() -> ReportSettings:
    """REPORT_* from the environment; a SettingsError (one line) if they cannot work."""
    report = load_report_settings()
    if report.report_cron is not None:
        require_matplotlib()
    return report


def start_reports(
    settings: Settings, report: ReportSettings, ctx: dict[str, Any]
) -> asyncio.Task[None] | None:
    """Start the report schedule in this worker's loop; None when REPORT_CRON is unset."""
    if report.report_cron is None:
        return None
    ringez = ctx.get("ringez")
    if ringez is None:
        log.warning("report.disabled", why="REPORT_CRON is set but RINGEZ_API_KEY is not")
        return None
    from ringez_worker.report.job import generate_and_keep
    from ringez_worker.report.schedule import ReportScheduler

    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    metrics = ctx["metrics"]

    async def job(scheduled: Any) -> None:
        await generate_and_keep(
            ringez,
            ctx["redis"],
            keys,
            report,
            scheduled,
            on_done=lambda outcome: metrics.reports.labels(outcome).inc(),
        )

    owner = f"{socket.gethostname()}:{os.getpid()}"
    scheduler = ReportScheduler(report.report_cron, report.tz, ctx["redis"], keys, owner, job)
    log.info("report.scheduled", cron=report.report_cron, timezone=report.report_timezone)
    return asyncio.create_task(scheduler.run(), name="ringez-report-schedule")


async def stop_reports(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    try:
        await task
    except BaseException:
        pass  # cancelled, or it had already failed and said so
