"""The call quality monitor (agents/quality.py) through the real receiver, workers, Redis
and the sandbox's poor_quality scenario; assertions on what the sandbox received."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import aiohttp.web
import orjson
import pytest
from aiohttp.test_utils import TestServer
from arq.constants import in_progress_key_prefix, retry_key_prefix

from ringez_worker.api.ratelimit import RedisRateLimiter
from ringez_worker.sandbox import SandboxConfig, start_sandbox, start_scenario
from ringez_worker.sandbox.config import EmitterConfig
from ringez_worker.worker.cli import post_webhook
from ringez_worker.worker.receiver import create_app
from tests.agent_stack import PATH, agent_stack, runtime_stack
from tests.conftest import SECRET, event_body, make_settings, wait_for
from tests.processes import Proc

pytestmark = pytest.mark.timeout(90)

QUALITY = {"agents_enabled": "quality", "quality_poll_seconds": 0.1}


# Atomic, so a check finishing between reading the queue and its keys is not counted as
# pending. A running check stays in arq's queue until it finishes, next to the one it
# scheduled: under RingezWorker with its score moved to its lease's deadline and its try
# counter set (a check that was never claimed has none); under plain arq with an
# in-progress key.
_PENDING = """
local n = 0
local queued = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #queued, 2 do
  local id = queued[i]
  if string.sub(id, 1, #ARGV[1]) == ARGV[1] then
    local leased = redis.call('EXISTS', ARGV[2] .. id) == 1 or (
      redis.call('EXISTS', ARGV[3] .. id) == 1 and tonumber(queued[i + 1]) > tonumber(ARGV[4]))
    if not leased then n = n + 1 end
  end
end
return n
"""


async def pending_checks(redis_client, settings, call_id: str) -> int:
    """Checks of this call queued and not yet claimed by a worker."""
    prefix = f"task:quality.check:{call_id}:"
    args = (prefix, in_progress_key_prefix, retry_key_prefix, int(time.time() * 1000))
    return int(await redis_client.eval(_PENDING, 1, settings.queue_name, *args))


async def test_poor_quality_reports_once_and_switches_codec_once_with_one_pending_check(
    redis_url, redis_client
):
    # Every event delivered twice, to two workers: redelivered call.answered included.
    async with agent_stack(redis_url, workers=2, duplicate=True, agent_config=QUALITY) as stack:
        run = start_scenario(stack.sandbox.sandbox, "poor_quality", stack.receiver_url)
        most = 0
        while not run.done:
            most = max(most, await pending_checks(redis_client, stack.settings, run.call_id))
            await asyncio.sleep(0.01)  # sampling the queue, not synchronising
        await run.task
        call = stack.sandbox.sandbox.state.get_call(run.call_id)
        assert call.codec == "OPUS"
        assert len(call.issues) == 1, call.issues
        switches = stack.requests(f"/calls/{run.call_id}/actions", action="switch_codec")
        assert len(switches) == 1, switches
        assert 1 <= most <= 1, most
        # The call ended: the last check finds it so and schedules nothing.
        await wait_for(
            lambda: _zero(redis_client, stack.settings, run.call_id),
            deadline_s=20,
            what="no check pending after the call ended",
        )
        record = await redis_client.hgetall(f"rz:call:{run.call_id}:quality:record")
        assert float(record[b"mos_min"]) <= 2.5
        assert float(record[b"packet_loss_max"]) > 0.05
        assert record[b"breach:warning"] == b"report_issue"
        assert record[b"breach:critical"] == b"switch_codec"
        assert int(await redis_client.ttl(f"rz:call:{run.call_id}:quality:record")) > 0


async def _zero(redis_client, settings, call_id: str) -> bool:
    return await pending_checks(redis_client, settings, call_id) == 0


async def test_redelivered_call_answered_starts_no_second_chain_of_checks(redis_url, redis_client):
    async with agent_stack(redis_url, workers=2, agent_config=QUALITY) as stack:
        run = start_scenario(stack.sandbox.sandbox, "poor_quality", stack.receiver_url)
        call = stack.sandbox.sandbox.state.get_call(run.call_id)
        await wait_for(lambda: call.status == "in-progress", deadline_s=20, what="answered")
        most, sent = 0, 0
        while not run.done:
            if sent < 8:  # call.answered again, as new deliveries (distinct bodies)
                body = event_body(
                    "call.answered", call_id=run.call_id, session_id=run.session_id, again=sent
                )
                status, _ = await post_webhook(stack.receiver_url, body, SECRET)
                assert status == 202
                sent += 1
            most = max(most, await pending_checks(redis_client, stack.settings, run.call_id))
            await asyncio.sleep(0.01)  # sampling the queue, not synchronising
        assert most == 1
        assert len(call.issues) == 1
        switches = stack.requests(f"/calls/{run.call_id}/actions", action="switch_codec")
        assert len(switches) == 1, switches


async def test_under_the_budget_floor_a_new_call_is_not_polled(redis_url, redis_client):
    limit = 20
    async with agent_stack(redis_url, agent_config=QUALITY, ringez_rate_limit=limit) as stack:
        limiter = RedisRateLimiter.for_api_key(
            redis_client, "sk_test_agents", prefix="rz", limit=limit, period=3600.0
        )
        for _ in range(17):  # 85 % of the window spent: 15 % left, under the 20 % floor
            await limiter.acquire()
        run = start_scenario(stack.sandbox.sandbox, "poor_quality", stack.receiver_url)
        call = stack.sandbox.sandbox.state.get_call(run.call_id)
        await wait_for(lambda: bool(call.quality), deadline_s=20, what="answered, degrading")
        # call.answered handled (the queue empty): it scheduled no check.
        await wait_for(
            lambda: _empty(redis_client, stack.settings), deadline_s=20, what="queue drained"
        )
        assert stack.requests(f"/calls/{run.call_id}") == []
        assert stack.sandbox.sandbox.state.get_call(run.call_id).issues == []
        assert not await redis_client.exists(f"rz:call:{run.call_id}:quality:started")


async def _empty(redis_client, settings) -> bool:
    return await redis_client.zcard(settings.queue_name) == 0


async def test_the_summary_carries_the_quality_record_whichever_agent_finishes_last(redis_client):
    # The scripts both agents write through, on a real Redis, in both orders.
    from ringez_worker.agents import quality as q
    from ringez_worker.agents.state import CallKeys, write_summary

    summary = {"call_id": "c1", "intents": [], "sentiment": {"samples": 0}, "reason": None}
    early, late = CallKeys("rz", "c_early"), CallKeys("rz", "c_late")

    async def read(keys: CallKeys) -> dict:
        return orjson.loads(await redis_client.get(keys.summary))

    # The monitor first, then the summary: the summary reads the record.
    await q._RECORD(redis_client, [early.quality("record"), early.summary], ["3.0", "0.2", "", 60])
    await write_summary(redis_client, early, orjson.dumps(summary), 60)
    got = await read(early)
    assert got["intents"] == [] and got["reason"] is None  # untouched, lists stay lists
    assert got["quality"] == {
        "samples": 1,
        "mos_min": 3.0,
        "mos_mean": 3.0,
        "packet_loss_max": 0.2,
        "breaches": {},
    }

    # The summary first (the call ended), then a last poll and an action: both rewrite it.
    await write_summary(redis_client, late, orjson.dumps(summary), 60)
    assert "quality" not in await read(late)
    await q._RECORD(redis_client, [late.quality("record"), late.summary], ["2.0", "", "450", 60])
    claim = [late.quality("breach:critical"), late.quality("record"), late.summary]
    assert await q._CLAIM(redis_client, claim, [60, "critical"]) == 1
    assert (await read(late))["quality"]["breaches"] == {"critical": "pending"}
    await q._RECORD(redis_client, [late.quality("record"), late.summary], ["4.0", "", "", 60])
    await q._ACTED(redis_client, claim, [60, "critical", "switch_codec"])
    got = await read(late)
    assert got["quality"]["mos_min"] == 2.0 and got["quality"]["mos_mean"] == 3.0
    assert got["quality"]["latency_max_ms"] == 450
    assert got["quality"]["breaches"] == {"critical": "switch_codec"}
    assert {k: got[k] for k in summary} == summary
    assert 0 < await redis_client.ttl(late.summary) <= 60  # the summary's TTL kept
    # A redelivered call.completed rewrites the summary: the record is still folded in.
    await write_summary(redis_client, late, orjson.dumps(summary), 60)
    assert (await read(late))["quality"]["breaches"] == {"critical": "switch_codec"}


async def test_quality_series_reach_the_workers_metrics_endpoint(
    redis_url, redis_client, monkeypatch
):
    # The runtime's own wiring (build_router from settings), not a router built here.
    env = {"AGENTS_ENABLED": "quality", "QUALITY_POLL_SECONDS": "0.1"}
    async with runtime_stack(
        redis_url, monkeypatch, env=env, sandbox_config={"escalation_wait_seconds": 10}
    ) as stack:
        run = start_scenario(
            stack.sandbox.sandbox, "poor_quality", str(stack.receiver.make_url(PATH))
        )
        await asyncio.wait_for(run.task, 60)
        text = await stack.scrape()
    assert 'ringez_quality_breaches_total{level="warning"} 1.0' in text, text
    assert 'ringez_quality_breaches_total{level="critical"} 1.0' in text
    mos_count = [ln for ln in text.splitlines() if ln.startswith("ringez_quality_mos_count")]
    assert mos_count and float(mos_count[0].split()[-1]) >= 2, mos_count
    assert "ringez_quality_latency_ms_bucket" in text
    assert "ringez_quality_packet_loss_bucket" in text


class HoldingProxy:
    """The API between the workers and the sandbox: passes every request on, but answers
    the first issue report and the first codec switch never (after the sandbox has acted
    on them), so the test can SIGKILL the worker that is waiting for the answer. After
    the switch, the call's next few reads still show the pre-switch (critical) quality,
    as a lagging API would: a retry that resent the switch would show here."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.held = {"report_issue": asyncio.Event(), "switch_codec": asyncio.Event()}
        self.seen: list[str] = []
        self.stale_reads = 3
        self._last_read: tuple[bytes, int] | None = None
        self._never = asyncio.Event()
        app = aiohttp.web.Application()
        app.router.add_route("*", "/{tail:.*}", self._pass)
        self.server = TestServer(app)

    async def _pass(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.read()
        path = request.match_info["tail"]
        what = None
        if path.endswith("/issues"):
            what = "report_issue"
        elif path.endswith("/actions") and orjson.loads(body).get("action") == "switch_codec":
            what = "switch_codec"
        if what is not None:
            self.seen.append(what)
        is_read = request.method == "GET" and path.count("/") == 3  # api/v1/calls/<id>
        if is_read and self.held["switch_codec"].is_set() and self._last_read is not None:
            if self.stale_reads > 0:
                self.stale_reads -= 1
                answer, status = self._last_read
                return aiohttp.web.Response(
                    body=answer, status=status, content_type="application/json"
                )
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        base = str(request.url.with_path("").with_query(None)).rstrip("/")
        target = str(request.url).replace(base, "", 1)
        async with aiohttp.ClientSession() as http:
            async with http.request(
                request.method,
                self.upstream + target.removeprefix("/api/v1"),
                data=body,
                headers=headers,
            ) as upstream:
                answer = await upstream.read()
                status, ctype = upstream.status, upstream.content_type
        if is_read and not self.held["switch_codec"].is_set():
            self._last_read = (answer, status)
        if what is not None and not self.held[what].is_set():
            self.held[what].set()
            await self._never.wait()  # the worker is killed while it waits
        return aiohttp.web.Response(body=answer, status=status, content_type=ctype)


async def test_a_worker_sigkilled_after_each_action_sends_each_at_most_once(
    redis_url, redis_client
):
    sandbox = await start_sandbox(
        SandboxConfig(
            webhook_secret=SECRET,
            # Each stage lasts long enough for the next worker to start and take over.
            pacing_seconds=1.5,
            escalation_wait_seconds=30,
            emitter=EmitterConfig(backoff_seconds=0.05, duplicate=True),
        )
    )
    proxy = HoldingProxy(sandbox.api_url)
    await proxy.server.start_server()
    receiver = None
    procs: list[Proc] = []
    try:
        settings = make_settings(redis_url)
        receiver = TestServer(create_app(settings))
        await receiver.start_server()
        env = {
            "REDIS_URL": redis_url,
            "RINGEZ_API_URL": str(proxy.server.make_url("/api/v1")),
            "RINGEZ_API_KEY": "sk_test_agents",
            "AGENTS_ENABLED": "support,quality",
            "QUALITY_POLL_SECONDS": "0.2",
            "JOB_LEASE_SECONDS": "1",
            "WORKER_METRICS_PORT": "0",
            "RETRY_BACKOFF_SECONDS": "0.05",
        }

        def start() -> Proc:
            procs.append(Proc("worker", env=env))
            procs[-1].wait_for_line("worker.started")
            return procs[-1]

        first = start()
        run = start_scenario(sandbox.sandbox, "poor_quality", str(receiver.make_url(PATH)))
        most = 0

        async def sample() -> None:
            # One pending check per call across the kills too (a killed worker's check
            # is taken over after its lease, never doubled), sampled until the call ends.
            nonlocal most
            while not run.done:
                most = max(most, await pending_checks(redis_client, settings, run.call_id))
                await asyncio.sleep(0.01)  # sampling the queue, not synchronising

        sampler = asyncio.create_task(sample())
        await wait_for(proxy.held["report_issue"].is_set, deadline_s=30, what="issue sent")
        first.stop(signal.SIGKILL)  # the issue is reported; its claim is not marked done
        second = start()
        await wait_for(proxy.held["switch_codec"].is_set, deadline_s=30, what="codec switch")
        second.stop(signal.SIGKILL)  # the codec is switched; its claim is not marked done
        start()
        await asyncio.wait_for(run.task, 60)
        await sampler
        call = sandbox.sandbox.state.get_call(run.call_id)

        async def summed_up() -> bool:
            return bool(await redis_client.exists(f"rz:summary:{run.call_id}"))

        await wait_for(summed_up, deadline_s=20, what="the call summary")
    finally:
        for proc in procs:
            proc.stop(signal.SIGKILL)
        if receiver is not None:
            await receiver.close()
        await proxy.server.close()
        await sandbox.close()
    # The second worker resent the report (same idempotency key), never the codec switch.
    assert proxy.seen.count("report_issue") == 2, proxy.seen
    assert len(call.issues) == 1, call.issues
    assert proxy.seen.count("switch_codec") == 1, proxy.seen
    assert most == 1, most
    assert proxy.stale_reads < 3  # the retry did read the critical quality again
    assert call.codec == "OPUS"
    summary = orjson.loads(await redis_client.get(f"rz:summary:{run.call_id}"))
    # The warning's report confirmed by the retry; the switch's answer was lost with its
    # worker, so the record says it is pending (sent at most once, outcome unknown).
    assert summary["quality"]["breaches"]["warning"] == "report_issue"
    assert summary["quality"]["breaches"]["critical"] == "pending"
    assert summary["quality"]["mos_min"] <= 2.5


async def test_thresholds_are_the_settings_not_the_guides_numbers(redis_url, redis_client):
    # The poor_quality call breaches every default threshold (the first test). Set looser,
    # only the warning MOS (left at 3.5) is crossed: a report, no codec switch, and no
    # packet-loss or latency breach.
    config = {
        **QUALITY,
        "quality_mos_critical": 1.0,
        "quality_packet_loss_max": 0.5,
        "quality_latency_max_ms": 2000,
    }
    async with agent_stack(redis_url, agent_config=config) as stack:
        run = start_scenario(stack.sandbox.sandbox, "poor_quality", stack.receiver_url)
        await run.task
        await wait_for(
            lambda: _zero(redis_client, stack.settings, run.call_id),
            deadline_s=20,
            what="no check pending after the call ended",
        )
        record = await redis_client.hgetall(f"rz:call:{run.call_id}:quality:record")
        assert float(record[b"mos_min"]) <= 2.5  # under the default critical, not this one
        breaches = sorted(k.decode() for k in record if k.startswith(b"breach:"))
        assert breaches == ["breach:warning"], breaches
        call = stack.sandbox.sandbox.state.get_call(run.call_id)
        assert len(call.issues) == 1 and call.codec != "OPUS"


async def test_under_the_budget_floor_a_live_call_polls_slower_and_it_is_said_once(
    redis_url, redis_client
):
    import structlog

    # A floor of 30 %: between it and the BACKGROUND class's own ceiling (80 % used, 20 %
    # left) polls still go out, 4x slower. (At the default floor of 20 % the two coincide
    # and polls simply wait for room.)
    limit = 200
    config = {**QUALITY, "quality_poll_seconds": 0.2, "quality_budget_floor": 0.3}
    with structlog.testing.capture_logs() as logs:
        async with agent_stack(redis_url, agent_config=config, ringez_rate_limit=limit) as stack:
            run = start_scenario(stack.sandbox.sandbox, "poor_quality", stack.receiver_url)
            record = f"rz:call:{run.call_id}:quality:record"
            await wait_for(lambda: redis_client.exists(record), 20, what="the first poll")
            limiter = RedisRateLimiter.for_api_key(
                redis_client, "sk_test_agents", prefix="rz", limit=limit, period=3600.0
            )
            while await limiter.left_fraction() >= 0.27:  # under the floor, above 20 %
                await limiter.acquire()
            prefix = f"arq:job:task:quality.check:{run.call_id}:"

            async def a_slow_check_is_pending() -> bool:
                async for key in redis_client.scan_iter(match=prefix + "*"):
                    raw = await redis_client.get(key)
                    score = await redis_client.zscore(stack.settings.queue_name, key[8:])
                    if raw and score is not None:
                        delay_ms = score - orjson.loads(raw)["et"]
                        if delay_ms >= 0.2 * 4 * 1000 * 0.95:  # 4x the poll, not 1x
                            return True
                return False

            await wait_for(a_slow_check_is_pending, 20, what="a check 4x the poll away")
            await run.task
            await wait_for(
                lambda: _zero(redis_client, stack.settings, run.call_id),
                deadline_s=20,
                what="no check pending after the call ended",
            )
    said = [e for e in logs if e["event"] == "quality.budget_floor"]
    assert len(said) == 1, said  # however many polls ran under it
