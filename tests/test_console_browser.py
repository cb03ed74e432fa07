"""The console in a real browser (headless chromium), over the real receiver, workers,
Redis and the sandbox: overview counts, a call's timeline, XSS, replay from the page."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from ringez_worker.handlers.router import Router
from ringez_worker.sandbox import start_scenario
from ringez_worker.settings import Settings
from ringez_worker.worker.console import create_console_app
from ringez_worker.worker.receiver import create_app
from tests.agent_stack import agent_stack
from tests.browser import Browser, require_browser
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for

TOKEN = "console-test-token-0123456789"
XSS_TEXT = '<script>window.__xss = 1; alert(1)</script><img src=x onerror="window.__xss = 2">'


@contextlib.asynccontextmanager
async def console(settings: Settings) -> AsyncIterator[str]:
    server = TestServer(create_console_app(settings))
    await server.start_server()
    try:
        yield str(server.make_url(settings.console_base_path or ""))
    finally:
        await server.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_browser()
    b = Browser()
    try:
        yield b
    finally:
        b.close()


async def login(b: Browser, base: str, start: str = "/") -> None:
    await b.get(base + start)
    field = await b.css("#token")  # an unauthenticated page sends us to the login form
    await b.screenshot("login")
    await b.do(field.send_keys, TOKEN)
    await b.click("#login")
    await b.wait(lambda d: "/login" not in d.current_url)


async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status


async def metric(receiver_url: str, name: str) -> int:
    """A receiver's own Prometheus counter: an independent count to check the page with."""
    url = receiver_url.rsplit("/webhooks", 1)[0] + "/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
    return int(sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)))


async def test_overview_call_timeline_and_xss_in_the_browser(redis_url: str, browser: Browser):
    async with agent_stack(redis_url, console_token=TOKEN, console_base_path="/ops") as stack:
        redis = Redis.from_url(redis_url)
        runs = [
            start_scenario(stack.sandbox.sandbox, name, stack.receiver_url)
            for name in ("calm", "angry", "low_balance")
        ]
        for run in runs:
            await run.task
        # A transcript whose text is markup: the console must show it, never run it.
        xss = event_body(
            "transcription.updated",
            call_id="call_xss",
            session_id='sess_xss"><script>window.__xss = 3</script>',
            text=XSS_TEXT,
            speaker="caller",
            is_final=True,
        )
        assert await post(stack.receiver_url, xss, signed_headers(xss)) == 202
        assert await post(stack.receiver_url, xss, signed_headers(xss)) == 200  # a duplicate
        assert (
            await post(
                stack.receiver_url,
                xss,
                {"Content-Type": "application/json", "X-Ringez-Signature": "0" * 64},
            )
            == 401
        )
        for run in runs[:2]:
            await wait_for(
                lambda run=run: redis.exists(f"rz:summary:{run.call_id}"),
                30,
                what=f"{run.name} summary",
            )
        await wait_for(lambda: _idle(redis), 30, what="the queue to drain")

        async with console(stack.settings) as base:
            await login(browser, base)
            accepted = await metric(stack.receiver_url, "ringez_webhooks_received_total")
            assert accepted > 10
            # The per-minute counters agree with the receiver's own count.
            await browser.wait(lambda d: d.find_element("id", "n-accepted").text == str(accepted))
            assert await browser.text("#n-duplicate") == "1"
            await browser.wait(lambda d: d.find_element("id", "n-rejected").text == "1")
            assert int(await browser.text("#n-handled")) > accepted  # several handlers per event
            assert await browser.text("#n-failed-events") == "0"
            assert await browser.text("#n-workers") == "1"
            # Live: one more rejected webhook shows up without a reload.
            assert (
                await post(stack.receiver_url, b"{}", {"Content-Type": "application/json"}) == 401
            )
            await browser.wait(lambda d: d.find_element("id", "n-rejected").text == "2")
            await browser.screenshot("overview")

            angry = runs[1]
            await browser.get(f"{base}/calls")
            await browser.click(f"a[href$='/calls/{angry.call_id}']")
            items = await browser.all("#timeline li.event")
            order = [await browser.do(i.get_attribute, "data-event") for i in items]
            assert order[:3] == ["call.initiated", "call.ringing", "call.answered"], order
            assert order[-1] == "call.completed" and "transcription.updated" in order, order
            assert await browser.text("#escalation") == "transferred"
            assert int(await browser.text("#intents")) >= 1
            assert await browser.all("#sentiment svg polyline")
            assert "escalated" in await browser.text("#summary")
            await browser.screenshot("call")
            await browser.get(f"{base}/calls")
            await browser.screenshot("calls")

            # The drained wallet's balance.low (it names the session, not the call) shows
            # on the call as the recharge agent's top-up.
            await wait_for(lambda: _recharged(stack, runs[2].session_id), 30, what="a recharge")
            await wait_for(lambda: _idle(redis), 30, what="the queue to drain")
            await browser.get(f"{base}/calls/{runs[2].call_id}")
            # As many top-ups as the sandbox saw charge requests for the session.
            charges = len(stack.charges(runs[2].session_id))
            assert await browser.text("#recharges") == str(charges)
            assert "minutes added" in await browser.text("#recharge")
            await browser.screenshot("call-recharge")

            await browser.get(f"{base}/calls/call_xss")
            shown = await browser.text("#timeline .text")
            assert "<script>window.__xss = 1" in shown and "onerror" in shown
            await _nothing_ran(browser)
            await browser.screenshot("call-xss")

            await browser.get(f"{base}/deliveries?call_id=call_xss")
            statuses = [
                await browser.do(lambda e=e: e.text)
                for e in await browser.all("#deliveries .badge")
            ]
            assert sorted(statuses) == ["duplicate", "handled"], statuses
            await browser.screenshot("deliveries")
            await browser.click("#deliveries td a")
            assert "<img src=x onerror" in await browser.text("#body")
            await _nothing_ran(browser)
            assert "sk_test_agents" not in await browser.do(lambda: browser.driver.page_source)
            await browser.screenshot("delivery")

            # A caller segment's delivery page lists the API requests its handlers made.
            await browser.get(f"{base}/calls/{angry.call_id}")
            link = await browser.wait(
                lambda d: d.find_element("xpath", "//li[contains(., 'sentiment_score=')]//a")
            )
            await browser.do(link.click)
            runs_text = await browser.text("table.runs")
            assert "POST /agents/sentiment-analysis → 200" in runs_text, runs_text
            assert "POST /agents/intent-detection → 200" in runs_text, runs_text
            await browser.screenshot("delivery-api")
        await redis.aclose()


async def _nothing_ran(browser: Browser) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    assert await browser.do(browser.driver.execute_script, "return window.__xss === undefined")
    with pytest.raises(NoAlertPresentException):
        await browser.do(lambda: browser.driver.switch_to.alert.text)


def _recharged(stack, session_id: str) -> bool:
    return bool(stack.charges(session_id))


async def _idle(redis: Redis) -> bool:
    return await redis.zcard("ringez:queue") == 0


async def test_a_failed_event_replayed_from_the_page_reaches_its_handler(
    redis_url: str, browser: Browser
):
    settings = make_settings(redis_url, console_token=TOKEN)
    redis = Redis.from_url(redis_url)
    await redis.set("test:broken", 1)
    router = Router()

    @router.on("call.completed", name="test.billing")
    async def billing(event, ctx) -> None:
        if await ctx.redis.exists("test:broken"):
            raise RuntimeError("billing backend down <b>bold</b>")
        await ctx.redis.rpush("test:reached", ctx.delivery_id)

    receiver = TestServer(create_app(settings))
    await receiver.start_server()
    url = str(receiver.make_url(settings.webhook_path))
    try:
        async with running_worker(settings, router), console(settings) as base:
            bodies = [
                event_body("call.completed", call_id=f"call_f{i}", duration=i) for i in range(2)
            ]
            for body in bodies:
                assert await post(url, body, signed_headers(body)) == 202
            await wait_for(lambda: _failed_count(redis, 2), 30, what="two failed events")
            await redis.delete("test:broken")  # the backend is back

            await login(browser, base, "/failed")
            assert len(await browser.all("#failed tr.failed-row")) == 2
            assert "billing backend down <b>bold</b>" in await browser.text("#failed")
            await browser.screenshot("failed")
            first = (await browser.all("input[name=ids]"))[0]
            chosen = await browser.do(first.get_attribute, "value")
            await browser.do(first.click)
            await browser.click("#replay-selected")
            await browser.css("#confirm")  # a confirmation step, nothing done yet
            assert await redis.llen("test:reached") == 0
            await browser.screenshot("confirm")
            await browser.click("#confirm")
            assert await browser.text("#notice") == "Replayed 1."
            await wait_for(
                lambda: _reached(redis, chosen), 30, what="the replay to reach the handler"
            )
            await wait_for(lambda: _failed_count(redis, 1), 30, what="the record to clear")

            # The other one: purged from its detail page, after confirming.
            await browser.get(f"{base}/failed")
            await browser.click("#failed td.mono a")
            assert '"event": "call.completed"' in await browser.text("#body")
            await browser.screenshot("failed-detail")
            await browser.click("#purge-one")
            await browser.click("#confirm")
            await browser.css("#no-failed")
            assert await redis.hlen("rz:failed") == 0
            assert await redis.lrange("test:reached", 0, -1) == [chosen.encode()]
    finally:
        await receiver.close()
        await redis.aclose()


async def _failed_count(redis: Redis, n: int) -> bool:
    return await redis.hlen("rz:failed") == n


async def _reached(redis: Redis, delivery_id: str) -> bool:
    return delivery_id.encode() in await redis.lrange("test:reached", 0, -1)


async def test_a_monitored_calls_page_shows_its_quality_record(redis_url: str, browser: Browser):
    agents = {"agents_enabled": "support,quality", "quality_poll_seconds": 0.1}
    async with agent_stack(redis_url, agent_config=agents, console_token=TOKEN) as stack:
        redis = Redis.from_url(redis_url)
        run = start_scenario(stack.sandbox.sandbox, "poor_quality", stack.receiver_url)
        await run.task
        await wait_for(
            lambda: redis.exists(f"rz:summary:{run.call_id}"), 30, what="the call summary"
        )
        async with console(stack.settings) as base:
            await login(browser, base, f"/calls/{run.call_id}")
            panel = await browser.text("#quality")
            await browser.screenshot("call-quality")
        await redis.aclose()
    assert "breach: warning\nreport_issue" in panel, panel
    assert "breach: critical\nswitch_codec" in panel, panel
    assert "min 2.1" in panel, panel


async def test_a_call_erased_from_its_page_is_gone_and_the_other_stays(
    redis_url: str, browser: Browser
):
    async with agent_stack(redis_url, console_token=TOKEN) as stack:
        redis = Redis.from_url(redis_url)
        runs = [start_scenario(stack.sandbox.sandbox, "calm", stack.receiver_url) for _ in "ab"]
        for run in runs:
            await run.task
        for run in runs:
            await wait_for(
                lambda run=run: redis.exists(f"rz:summary:{run.call_id}"), 30, what="summaries"
            )
        await wait_for(lambda: _idle(redis), 30, what="the queue to drain")
        gone, kept = runs[0].call_id, runs[1].call_id
        try:
            async with console(stack.settings) as base:
                await login(browser, base, f"/calls/{gone}")
                await browser.click("#erase-call")
                assert await browser.text("#subject") == gone  # a confirmation, nothing done
                assert await redis.exists(f"rz:summary:{gone}")
                await browser.screenshot("erase-confirm")
                await browser.click("#confirm")
                notice = await browser.text("#notice")
                assert notice.startswith(f"Erased call {gone}:") and "0 removed" not in notice
                assert await browser.text('[data-place="call summaries"]') == "1"
                await browser.screenshot("erase-done")
                assert not await redis.exists(f"rz:summary:{gone}")
                assert await redis.exists(f"rz:summary:{kept}")
                await browser.get(f"{base}/calls/{gone}")
                assert "no such call" in await browser.text("body")
                await browser.get(f"{base}/calls/{kept}")
                assert await browser.text("h1") == f"Call {kept}"
        finally:
            await redis.aclose()


async def test_the_callback_queue_page_shows_agents_and_waiting_requests(
    redis_url: str, browser: Browser, tmp_path
):
    from ringez_worker.agents.callbacks import add_callback, load_roster_file
    from ringez_worker.keys import Keys

    settings = make_settings(redis_url, console_token=TOKEN)
    redis = Redis.from_url(redis_url)
    try:
        roster = tmp_path / "roster.yaml"
        roster.write_text(
            "- {id: ana, number: '+14155550900', skills: [billing], max_concurrent: 2}\n"
            "- {id: bo, number: '+14155550901', available: false}\n"
        )
        await load_roster_file(redis, Keys(), str(roster))
        await redis.hset("rz:callbacks:load", "ana", 1)
        first = await add_callback(
            redis, Keys(), {"customer_id": "c-1", "phone": "+14155550123", "skill": "billing"}
        )
        await add_callback(redis, Keys(), {"customer_id": "c-2", "phone": "+14155550124"})
        async with console(settings) as base:
            await login(browser, base, "/callbacks")
            assert await browser.text("#n-waiting") == "2"
            assert await browser.text("#n-live") == "1"
            assert await browser.text("[data-agent='ana'] .load") == "1 / 2"
            assert "away" in await browser.text("[data-agent='bo']")
            row = await browser.text(f"[data-request='{first.request_id}']")
            assert "c-1" in row and "+***0123" in row and "+14155550123" not in row
            await browser.screenshot("callbacks")
    finally:
        await redis.aclose()


async def test_a_callback_calls_page_shows_the_request_it_was_placed_for(
    redis_url: str, browser: Browser, tmp_path
):
    from tests import test_callbacks as cb

    config = cb.agents_config()
    async with agent_stack(
        redis_url,
        agent_config=config,
        callbacks_token=cb.TOKEN,
        console_token=TOKEN,
        sandbox_config={"talk_seconds": 0.05},
    ) as stack:
        redis = Redis.from_url(redis_url)
        try:
            await cb.roster(redis, tmp_path, "- {id: ana, number: '+14155550900'}\n")
            body = cb.request(5, urgency="high")
            status, answer = await cb.post(cb.callbacks_url(stack), body)
            assert status == 202, answer
            rid = answer["request_id"]

            async def done() -> bool:
                return (await cb.states(redis, [rid]))["done"] == 1

            await wait_for(done, 30, what="the callback done")
            call_id = (await redis.hget(f"rz:callback:{rid}", "call_id")).decode()
            await wait_for(lambda: _idle(redis), 30, what="the queue to drain")
            async with console(stack.settings) as base:
                await login(browser, base, f"/calls/{call_id}")
                panel = await browser.text("#callback")
                card = await browser.text("#escalation")
                await browser.screenshot("call-callback")
        finally:
            await redis.aclose()
    assert rid in panel and "cust5" in panel, panel
    assert "+***0005" in panel and "+14155550005" not in panel, panel
    assert "high, 30" in panel and "ana (attempt 1)" in panel and "done" in panel, panel
    assert card == "connected"  # the queue's own transfer, not an escalation


async def test_the_campaigns_page_shows_progress_and_pauses_from_the_page(
    redis_url: str, browser: Browser
):
    from ringez_worker.agents.campaign import api as campaigns
    from ringez_worker.keys import Keys

    settings = make_settings(redis_url, console_token=TOKEN)
    redis = Redis.from_url(redis_url)
    csv = "id,phone,name\nk1,+15006660031,Ann <b>Lee</b>\nk2,+15006660033,Bo\n"
    try:
        created = await campaigns.create_campaign(redis, Keys(), csv, {"message": "Hi"})
        cid = created.campaign_id
        # Running, with no worker to dial: what a pause from the page must stop.
        await redis.hset(f"rz:campaign:{cid}", mapping={"state": "running"})
        await redis.hset(f"rz:campaign:{cid}:contact:k1", mapping={"state": "done", "digits": "1"})
        async with console(settings) as base:
            await login(browser, base, "/campaigns")
            assert await browser.text(f"[data-campaign='{cid}'] .finished") == "1 / 2"
            row = await browser.text("[data-contact='k1']")
            assert "+***0031" in row and "+15006660031" not in row and "done" in row
            assert "Ann <b>Lee</b>" in row  # the name as text, never markup
            await browser.screenshot("campaigns")
            await browser.click("#pause")
            assert (await browser.text("#notice")).startswith("Paused")
            assert await browser.text("#reason") == "paused from the console"
            assert (await redis.hget(f"rz:campaign:{cid}", "state")) == b"paused"
            await browser.screenshot("campaigns-paused")
            await browser.click("#resume")

            async def resumed() -> bool:
                return (await redis.hget(f"rz:campaign:{cid}", "state")) == b"running"

            await wait_for(resumed, 10, what="the campaign resumed from the page")
            # The same POST with the console's cookie but without the CSRF token: refused.
            status = await browser.do(
                browser.driver.execute_async_script,
                "const done = arguments[arguments.length - 1];"
                "fetch(arguments[0], {method: 'POST', body: new URLSearchParams("
                "{action: 'pause', id: arguments[1]})}).then(r => done(r.status));",
                f"{base}/campaigns/action",
                cid,
            )
            assert status == 403
            assert (await redis.hget(f"rz:campaign:{cid}", "state")) == b"running"
    finally:
        await redis.aclose()


async def test_a_campaign_calls_page_shows_its_campaign_and_contact(
    redis_url: str, browser: Browser
):
    from ringez_worker.agents.campaign import api as campaigns
    from ringez_worker.keys import Keys

    agents = {"agents_enabled": "campaigns", "campaign_sweep_seconds": 1}
    async with agent_stack(redis_url, agent_config=agents, console_token=TOKEN) as stack:
        redis = Redis.from_url(redis_url)
        try:
            csv = "id,phone,name\nk7,+15006660037,Kim\n"  # answers, presses 7
            config = {"message": "Hello", "name": "December reminders", "ring_timeout": 5}
            created = await campaigns.create_campaign(redis, Keys(), csv, config)
            await campaigns.start(redis, Keys(), created.campaign_id)

            async def finished() -> bool:
                status = await campaigns.status(redis, Keys(), created.campaign_id)
                return status["state"] == "done"

            await wait_for(finished, 30, what="the one-contact campaign done")
            await wait_for(lambda: _idle(redis), 30, what="the queue to drain")
            (row,) = await campaigns.export(redis, Keys(), created.campaign_id)
            async with console(stack.settings) as base:
                await login(browser, base, f"/calls/{row['call_ids'][0]}")
                panel = await browser.text("#campaign")
                await browser.screenshot("call-campaign")
        finally:
            await redis.aclose()
    assert "December reminders" in panel and "k7 Kim (+***0037)" in panel, panel
    assert "+15006660037" not in panel and "digits pressed\n7" in panel, panel
