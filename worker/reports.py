"""The worker's side of REPORT_CRON: validated at start-up, one scheduler task per worker."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import datetime
from typing import Any

from ringez_worker.handlers import Context, Router
from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger
from ringez_worker.report.settings import ReportSettings, load_report_settings, require_matplotlib
from ringez_worker.settings import Settings
from ringez_worker.worker.metrics import WorkerMetrics

log = get_logger("ringez.worker")

RENDER = "report.render"


def report_settings() -> ReportSettings:
    """REPORT_* from the environment; a SettingsError (one line) if they cannot work."""
    report = load_report_settings()
    if report.report_cron is not None:
        require_matplotlib()
    return report


def report_router(settings: Settings, report: ReportSettings, metrics: WorkerMetrics) -> Router:
    """The `report.render` task's handler, on the worker's router when REPORT_CRON is set."""
    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    router = Router()

    @router.on_task(RENDER, name="report.render")
    async def render(event: Any, ctx: Context) -> None:
        from ringez_worker.report.job import generate_and_keep

        data = event.data if isinstance(event.data, dict) else event.data.model_dump()
        scheduled = datetime.fromisoformat(str(data["scheduled"]))
        await generate_and_keep(
            ctx.ringez,
            ctx.redis,
            keys,
            report,
            scheduled,
            on_done=lambda outcome: metrics.reports.labels(outcome).inc(),
        )

    return router


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
    from ringez_worker.jobs import schedule_task
    from ringez_worker.report.schedule import ReportScheduler, claim_name

    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)

    async def job(scheduled: datetime) -> None:
        # The winner of the time's claim queues the render as a task (unique per time):
        # a failed render is retried with backoff like any job, lands in the
        # failed-events record after JOB_MAX_TRIES, and survives the worker dying.
        # Before, one failure meant no report until the next scheduled time.
        data = {"scheduled": scheduled.isoformat()}
        await schedule_task(ctx["redis"], keys, RENDER, data, key=claim_name(scheduled))

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
