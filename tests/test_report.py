"""The daily report: a sandbox day with known traffic played through the real receiver,
workers and Redis, rendered, and its numbers checked against the sandbox's own records;
the per-charge recharge record; the schedule's once-per-time claim; REPORT_CRON checks."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from ringez_worker.agents.recharge_record import record_charge
from ringez_worker.api import RingezClient
from ringez_worker.keys import Keys
from ringez_worker.report.command import report_to_files
from ringez_worker.report.job import generate_and_keep
from ringez_worker.report.schedule import ReportScheduler
from ringez_worker.report.settings import ReportSettings, load_report_settings
from ringez_worker.sandbox import start_scenario
from ringez_worker.settings import SettingsError
from tests.agent_stack import agent_stack
from tests.conftest import make_settings, wait_for
from tests.processes import run_cli

pytestmark = pytest.mark.timeout(90)

CHARTS = ("volume", "outcomes", "durations", "cost", "actions", "quality")


def test_the_page_and_the_charts_name_the_same_charts():
    from ringez_worker.report.charts import CHARTS as DRAWN
    from ringez_worker.report.page import CHART_TITLES

    assert tuple(DRAWN) == tuple(CHART_TITLES) == CHARTS


def noon_zone() -> ZoneInfo:
    """A fixed-offset zone where it is about noon now: the day's calls cannot straddle
    midnight, and the hours are not UTC's (Etc/GMT-N is UTC+N)."""
    offset = 12 - datetime.now(UTC).hour
    return ZoneInfo("Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}" if offset else ""))


def metrics_in(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-metric="([a-z_]+)">([^<]*)<', page))


async def queue_empty(redis_client, settings) -> bool:
    return await redis_client.zcard(settings.queue_name) == 0


async def test_report_of_a_played_day_matches_the_sandbox(redis_url, redis_client, tmp_path):
    tz = noon_zone()
    async with agent_stack(redis_url, workers=2) as stack:
        sb = stack.sandbox.sandbox
        runs = [
            start_scenario(sb, name, stack.receiver_url)
            for name in ("calm", "angry", "busy", "low_balance", "calm")
        ]
        await asyncio.wait_for(asyncio.gather(*(r.task for r in runs)), 40)

        async def handled() -> bool:
            summaries = await redis_client.exists(*[f"rz:summary:{r.call_id}" for r in runs])
            charged = await redis_client.zcard("rz:recharge:charges")
            return (
                summaries == len(runs)
                and charged == 1
                and await queue_empty(redis_client, stack.settings)
            )

        await wait_for(handled, deadline_s=30, what="every call summed up and the charge kept")
        # The monitor's polls outlast these short calls: one call gets a record through
        # the monitor's own script, two polls (MOS 4.0 and 4.4).
        from ringez_worker.agents.quality import _RECORD
        from ringez_worker.agents.state import CallKeys

        polled = CallKeys("rz", runs[0].call_id)
        for mos in ("4.0", "4.4"):
            await _RECORD(
                redis_client, [polled.quality("record"), polled.summary], [mos, "", "", 60]
            )

        calls = [sb.state.get_call(r.call_id) for r in runs]
        day = datetime.fromtimestamp(calls[0].created_at, tz).date()
        report = ReportSettings(_env_file=None, report_timezone=tz.key)
        code, line = await report_to_files(
            stack.settings, report, day=day, session_id=None, out=tmp_path, latest=False
        )
    assert code == 0, line
    page = (tmp_path / f"report-{day.isoformat()}.html").read_text()
    got = metrics_in(page)

    ended = [c for c in calls if not c.active]
    completed = [c for c in calls if c.status == "completed"]
    assert {c.status for c in calls} == {"completed", "busy"}
    assert got["total_calls"] == "5"
    assert got["success_rate"] == f"{len(completed) / len(ended) * 100:.1f} %" == "80.0 %"
    average = round(sum(c.duration for c in ended) / len(ended), 2)
    assert got["average_duration"] == f"{average:.1f} s"
    total_cost = sum(c.cost for c in calls)
    assert total_cost > 0
    assert got["total_cost"] == f"{total_cost:.2f}"
    assert got["summary_cost"] == f"{total_cost:.2f}"  # the two sources agree
    hour = datetime.fromtimestamp(calls[0].created_at, tz).hour
    assert got["peak_hour"] == f"{hour:02d}:00-{hour + 1:02d}:00"
    assert got["transfers"] == "1"
    assert got["recharges"] == "1"
    assert got["recharge_amount"] == "10.00 USD"
    assert got["quality_samples"] == "1"
    assert "campaign_calls" not in got  # none today: the row is left out
    assert f"hours in {tz.key}" in page
    assert "sk_test_agents" not in page and "whsec_" not in page
    for name in CHARTS:
        png = (tmp_path / f"report-{day.isoformat()}-{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG")
        assert f'data-chart="{name}"' in page
    assert 'class="empty"' not in page  # every chart had something to draw


async def test_an_empty_day_says_so(redis_url, tmp_path):
    async with agent_stack(redis_url) as stack:
        report = ReportSettings(_env_file=None)
        day = datetime.now(UTC).date() - timedelta(days=3)
        code, _ = await report_to_files(
            stack.settings, report, day=day, session_id=None, out=tmp_path, latest=False
        )
    assert code == 0
    page = (tmp_path / f"report-{day.isoformat()}.html").read_text()
    got = metrics_in(page)
    assert (got["total_calls"], got["peak_hour"], got["recharges"]) == ("0", "-", "0")
    assert len(list(tmp_path.glob("*.png"))) == len(CHARTS)
    # Each chart says why it is empty in the page's text too, not only in its PNG.
    captions = re.findall(r'<figcaption class="empty">([^<]+)</figcaption>', page)
    assert len(captions) == len(CHARTS), captions
    assert "call volume by hour: no calls on this day" in captions
    assert 'alt="call durations: no completed calls on this day"' in page
    # Each number names where it comes from: the API's figures and the service's records.
    sources = dict(re.findall(r'data-metric="(\w+)">[^<]*</td><td class="source">([^<]+)<', page))
    assert sources["total_calls"] == "API analytics/call-metrics (group_by=hour)"
    assert sources["summary_cost"] == "call summaries (Redis rz:summary:*)"
    assert sources["recharges"] == "recharge records (Redis, one per charge)"


async def test_reports_kept_are_the_newest_report_keep_and_none_over_the_size_cap(redis_client):
    from ringez_worker.report.store import ReportTooLarge, latest_report, save_report

    keys = Keys()
    for n in range(5):
        page = f"<html><h1>report {n}</h1></html>"
        await save_report(
            redis_client, keys, f"r{n}", {"day": f"d{n}"}, page, keep=3, max_bytes=4096
        )
    assert [i.decode() for i in await redis_client.lrange(keys.reports, 0, -1)] == [
        "r4",
        "r3",
        "r2",
    ]
    for gone in ("r0", "r1"):
        assert not await redis_client.exists(keys.report(gone))  # trimmed pages go whole
    with pytest.raises(ReportTooLarge, match="REPORT_MAX_BYTES"):
        await save_report(redis_client, keys, "big", {}, "x" * 5000, keep=3, max_bytes=4096)
    assert not await redis_client.exists(keys.report("big"))
    newest = await latest_report(redis_client, keys)
    assert newest is not None and "report 4" in newest["html"]


async def test_a_charge_is_recorded_once_per_episode(redis_client):
    keys = Keys()
    kwargs = {
        "session_id": "sess_1",
        "idempotency_key": "recharge:sess_1:0",
        "transaction_id": "txn_1",
        "amount": 10.0,
        "currency": "USD",
        "ttl_seconds": 3600,
    }
    assert await record_charge(redis_client, keys, **kwargs) is True
    assert await record_charge(redis_client, keys, **kwargs) is False  # the retry
    assert await redis_client.zcard(keys.recharges) == 1
    record = orjson.loads(await redis_client.get(keys.recharge("recharge:sess_1:0")))
    assert record["transaction_id"] == "txn_1" and record["episode_key"] == "recharge:sess_1:0"
    assert 0 < await redis_client.ttl(keys.recharge("recharge:sess_1:0")) <= 3600


class Clock:
    """Wall time shifted by `offset`; the test moves it instead of waiting a minute."""

    def __init__(self) -> None:
        now = datetime.now(UTC).timestamp()
        self.offset = (60 - now % 60) - 0.3  # 0.3 s before the next whole minute

    def __call__(self) -> float:
        return datetime.now(UTC).timestamp() + self.offset


async def test_two_workers_render_one_report_per_scheduled_time(redis_url, redis_client, tmp_path):
    async with agent_stack(redis_url) as stack:
        report = ReportSettings(_env_file=None, report_cron="* * * * *", report_keep=5)
        keys = Keys()
        clock = Clock()
        ringez = RingezClient.from_settings(stack.settings, redis=redis_client)
        schedulers = []
        for n in range(2):

            async def job(scheduled) -> None:
                await generate_and_keep(ringez, redis_client, keys, report, scheduled)

            schedulers.append(
                ReportScheduler(
                    report.report_cron, report.tz, redis_client, keys, f"w{n}", job, clock=clock
                )
            )
        tasks = [asyncio.create_task(s.run()) for s in schedulers]
        try:
            for minute in (1, 2):

                def reached(minute=minute) -> bool:
                    return all(len(s.fired) == minute for s in schedulers)

                await wait_for(reached, deadline_s=10, what=f"both workers at time {minute}")
                await wait_for(
                    lambda minute=minute: sum(len(s.won) for s in schedulers) == minute,
                    what="a winner",
                )
                await wait_for(
                    lambda minute=minute: _kept(redis_client, keys, minute),
                    what="the report kept",
                )
                clock.offset += 60  # on to the next scheduled time
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ringez.aclose()
        assert [len(s.fired) for s in schedulers] == [2, 2]
        assert sum(len(s.won) for s in schedulers) == 2
        assert schedulers[0].fired == schedulers[1].fired  # the same scheduled times

        # The newest kept report comes back out as files.
        out = tmp_path / "latest"
        result = run_cli("report", "--latest", "--out", str(out), env={"REDIS_URL": redis_url})
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*.html"))) == 1
    assert len(list(out.glob("*.png"))) == len(CHARTS)


async def test_workers_with_report_cron_keep_one_report_per_time(
    redis_url, redis_client, monkeypatch
):
    # Two real workers with REPORT_CRON from the environment, on a moved clock.
    from ringez_worker.report import schedule

    clock = Clock()
    monkeypatch.setattr(schedule, "_wall", clock)
    monkeypatch.setenv("REPORT_CRON", "* * * * *")
    monkeypatch.setenv("REPORT_DAY", "current")
    async with agent_stack(redis_url, workers=2) as stack:
        keys = Keys()

        def generated() -> float:
            return sum(
                w.ctx["metrics"].reports.labels("generated")._value.get() for w in stack.workers
            )

        await wait_for(lambda: _kept(redis_client, keys, 1), what="the first report")
        clock.offset += 60
        await wait_for(lambda: _kept(redis_client, keys, 2), what="the second report")
        await wait_for(lambda: generated() == 2, what="the metrics")
        # One report per scheduled time: two kept, for two different times.
        ids = [i.decode() for i in await redis_client.lrange(keys.reports, 0, -1)]
        assert len(set(ids)) == 2 and len({i.split("@")[1] for i in ids}) == 2, ids
        claims = [k async for k in redis_client.scan_iter(match="rz:report:claim:*")]
        assert len(claims) == 2
        failed = sum(w.ctx["metrics"].reports.labels("failed")._value.get() for w in stack.workers)
        assert failed == 0


async def _kept(redis_client, keys: Keys, n: int) -> bool:
    return await redis_client.llen(keys.reports) == n


def test_report_cron_is_checked_at_start_up():
    assert load_report_settings(_env_file=None).report_cron is None  # unset: off
    assert load_report_settings(_env_file=None, report_cron=" 5 0 * * 1-5 ").report_cron == (
        "5 0 * * 1-5"
    )
    for bad in ("61 * * * *", "* * * *", "0 0 * * * *", "every day"):
        with pytest.raises(SettingsError) as err:
            load_report_settings(_env_file=None, report_cron=bad)
        message = str(err.value)
        assert "REPORT_CRON" in message and "\n" not in message and bad not in message
    with pytest.raises(SettingsError, match="REPORT_TIMEZONE"):
        load_report_settings(_env_file=None, report_timezone="Mars/Olympus")


def test_a_worker_with_a_bad_report_cron_stops_with_one_line(redis_url):
    result = run_cli("worker", env={"REDIS_URL": redis_url, "REPORT_CRON": "99 * * * *"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "REPORT_CRON" in lines[0] and "99" not in lines[0]


def test_worker_metrics_count_reports(redis_url):
    from ringez_worker.worker.metrics import WorkerMetrics

    metrics = WorkerMetrics()
    metrics.reports.labels("generated").inc()
    from prometheus_client import generate_latest

    assert b'ringez_reports_total{outcome="generated"} 1.0' in generate_latest(metrics.registry)
    assert make_settings(redis_url)  # the fixture's settings still load with REPORT_* unset


def test_without_matplotlib_the_command_says_so_in_one_line(redis_url, tmp_path):
    from tests.processes import ROOT

    # A `matplotlib` that cannot be imported, first on the path: as if the extra is absent.
    blocked = tmp_path / "matplotlib"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {"REDIS_URL": redis_url, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    result = run_cli("report", "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ringez-worker: the report needs matplotlib, which is not installed: "
        "pip install 'ringez-agent-worker[report]'"
    ]
    assert not (tmp_path / "out").exists()
    # Reading a kept report back needs no matplotlib.
    latest = run_cli("report", "--latest", "--out", str(tmp_path / "out"), env=env)
    assert latest.returncode == 1 and "no report kept" in latest.stderr, latest.stderr


async def test_campaign_calls_and_one_session(redis_url, redis_client, tmp_path):
    async with agent_stack(redis_url) as stack:
        sb = stack.sandbox.sandbox
        campaign = sb.state.create_session(initial_minutes=50)
        other = sb.state.create_session(initial_minutes=50)
        sb.state.initiate_call(other.session_id, "+15005550006")
        async with RingezClient.from_settings(stack.settings, redis=redis_client) as ringez:
            placed = await ringez.batch.calls(
                session_id=campaign.session_id,
                calls=[{"to_number": "+15005550006"}, {"to_number": "+15005550007"}],
            )
        assert len(placed.calls) == 2
        # And one dialed by the service's own campaign agent (calls/initiate, one by one,
        # its campaign id in the call's metadata).
        async with RingezClient.from_settings(stack.settings, redis=redis_client) as ringez:
            await ringez.calls.initiate(
                session_id=campaign.session_id,
                to_number="+15006660031",
                metadata={"campaign_id": "cmp_1", "contact_id": "c1", "attempt": 1},
                idempotency_key="campaign:cmp_1:c1:1",
            )
        report = ReportSettings(_env_file=None)
        day = datetime.now(UTC).date()
        everyone, _ = await report_to_files(
            stack.settings, report, day=day, session_id=None, out=tmp_path / "all", latest=False
        )
        one, _ = await report_to_files(
            stack.settings,
            report,
            day=day,
            session_id=campaign.session_id,
            out=tmp_path / "one",
            latest=False,
        )
    assert everyone == one == 0
    got_all = metrics_in(next((tmp_path / "all").glob("*.html")).read_text())
    got_one = metrics_in(next((tmp_path / "one").glob("*.html")).read_text())
    assert (got_all["total_calls"], got_all["campaign_calls"]) == ("4", "3")
    assert (got_one["total_calls"], got_one["campaign_calls"]) == ("3", "3")


async def test_a_failed_scheduled_render_is_retried_as_a_job(redis_url, redis_client, monkeypatch):
    # Before the fix one failed render meant no report until the next scheduled time.
    from ringez_worker.report import schedule
    from ringez_worker.sandbox.config import FaultConfig

    clock = Clock()
    monkeypatch.setattr(schedule, "_wall", clock)
    monkeypatch.setenv("REPORT_CRON", "* * * * *")
    monkeypatch.setenv("REPORT_DAY", "current")
    # Every attempt the API client makes on the first try of the render answers 503.
    faults = FaultConfig(fail_next=[503] * 4, path_prefix="/api/v1/analytics")
    async with agent_stack(redis_url, sandbox_config={"faults": faults}) as stack:
        await wait_for(lambda: _kept(redis_client, Keys(), 1), deadline_s=30, what="a report")
        metrics = stack.workers[0].ctx["metrics"]
        assert metrics.reports.labels("failed")._value.get() == 1  # the first try
        assert metrics.reports.labels("generated")._value.get() == 1  # its retry
        assert stack.sandbox.sandbox.faults.injected[503] == 4
        assert await redis_client.hlen("rz:failed") == 0
