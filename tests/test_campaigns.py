"""Outbound campaigns (agents/campaign/) through the real workers, Redis and the sandbox
as Ringez; assertions on what the sandbox created and received."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from ringez_worker.agents.campaign import api
from ringez_worker.agents.campaign.agent import STALE_OPEN_MS, schedule_pass
from ringez_worker.agents.campaign.models import CampaignConfig, parse_contacts, parse_dnc
from ringez_worker.agents.campaign.store import CampaignKeys
from ringez_worker.keys import Keys
from ringez_worker.sandbox import REQUEST_LOG
from tests.agent_stack import agent_stack, runtime_stack
from tests.campaign_checks import (
    calls_per_attempt,
    calls_per_number,
    most_at_once,
    most_in_a_minute,
)
from tests.conftest import wait_for
from tests.processes import run_cli

pytestmark = pytest.mark.timeout(120)

KEYS = Keys()
# The sandbox's campaign range (README "Sandbox"): tens digit 1 busy, 2 no answer, else
# answers; the last digit is the one pressed (0: nothing).
CSV = """\
id,phone,name,timezone,plan
a1,+15006660031,Ann,America/New_York,gold
a2,+1 500 666 0049,Bo,,silver
a3,(500) 666-0050,Cy,,
b1,+15006660013,Dee,,
n1,+15006660024,Eve,,
bad,12345,Fay,,
a1dup,+15006660031,Gus,,
dnc,+15006660036,Hal,,
a4,+15006660033,Ida,Nowhere/Zone,
a5,+15006660035,Jo,Europe/Paris,
"""
FAST = {
    "message": "Hello from the campaign test. Press 1 to confirm, 9 to opt out.",
    "max_concurrent": 2,
    "retries": 1,
    "retry_after_seconds": 0.2,
    "ring_timeout": 1,
    "max_duration": 60,
}


def agents(**extra: Any) -> dict[str, Any]:
    return {"agents_enabled": "campaigns", "campaign_sweep_seconds": 1, **extra}


async def finished(redis_client, cid: str, deadline_s: float = 60) -> dict[str, Any]:
    async def done() -> bool:
        return (await api.status(redis_client, KEYS, cid))["state"] in ("done", "cancelled")

    await wait_for(done, deadline_s=deadline_s, what=f"campaign {cid} done")
    return await api.status(redis_client, KEYS, cid)


def test_the_contacts_file_reports_bad_rows_by_line_and_calls_a_number_once():
    dnc, problems = parse_dnc("+15006660036\nnot a number\n")
    assert dnc == {"+15006660036"} and problems == [
        "do-not-call line 2: phone is not a phone number"
    ]
    parsed = parse_contacts(CSV, do_not_call=dnc)
    assert [c.id for c in parsed.contacts] == ["a1", "a2", "a3", "b1", "n1", "a5"]
    assert parsed.contacts[2].phone == "+15006660050"  # national form, region US
    assert parsed.contacts[0].metadata == {"plan": "gold"}
    assert parsed.problems() == [
        "line 7: phone is not a possible phone number for its country code",
        "line 8: same number as line 2, called once",
        "line 9: on the do-not-call list, not called",
        "line 10: timezone: unknown time zone 'Nowhere/Zone'",
    ]
    with pytest.raises(ValueError, match="no 'phone' column"):
        parse_contacts("id,name\n1,x\n")
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        CampaignConfig(message="x", window="9-18")


async def test_a_campaign_calls_each_contact_plays_collects_and_reports(redis_url, redis_client):
    async with agent_stack(
        redis_url,
        workers=2,
        duplicate=True,
        agent_config=agents(),
        sandbox_config={"no_answer_seconds": 30, "initial_minutes": 600},
    ) as stack:
        dnc, _ = parse_dnc("+15006660036\n")
        created = await api.create_campaign(redis_client, KEYS, CSV, FAST, dnc=dnc)
        assert created.contacts == 6 and len(created.problems) == 4
        await api.start(redis_client, KEYS, created.campaign_id)
        status = await finished(redis_client, created.campaign_id)
        rows = {r["id"]: r for r in await api.export(redis_client, KEYS, created.campaign_id)}
        state = stack.sandbox.sandbox.state
        session_id = status["session_id"]
        session = state.sessions[session_id]
        assert session.max_spend_limit == 100.0  # the budget, as the session's limit

    assert {k: (r["status"], r["attempts"], r["digits"]) for k, r in rows.items()} == {
        "a1": ("done", 1, "1"),
        "a2": ("opted_out", 1, "9"),
        "a3": ("done", 1, ""),
        "b1": ("busy", 2, ""),
        "n1": ("no_answer", 2, ""),
        "a5": ("done", 1, "5"),
    }
    assert rows["a1"]["metadata"] == {"plan": "gold"} and rows["a1"]["cost"] > 0
    assert len(rows["b1"]["call_ids"]) == 2
    # From the sandbox: one call per attempt, the limits held, the message played and
    # the digits collected on every answered call.
    per_attempt = calls_per_attempt(state, session_id)
    assert set(per_attempt.values()) == {1} and len(per_attempt) == 8
    assert calls_per_number(state, session_id)["+15006660031"] == 1
    assert most_at_once(state, session_id, state.now()) <= 2
    answered = [c for c in state.calls.values() if c.answered_at is not None]
    assert len(answered) == 4
    for call in answered:  # then hung up (DELETE /calls/{id}, not an action)
        assert [a["action"] for a in call.actions] == ["play", "collect"]
        assert call.played[0].startswith("http") and call.status == "completed"
    assert status["counts"] == {"busy": 1, "done": 3, "no_answer": 1, "opted_out": 1}
    assert status["spent"] == pytest.approx(sum(r["cost"] for r in rows.values()))
    assert status["live"] == 0 and status["reserved"] == 0
    assert most_in_a_minute(state, session_id) == 8


async def test_the_cli_creates_starts_reports_and_exports(redis_url, redis_client, tmp_path):
    env = {"REDIS_URL": redis_url}
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("id,phone,name\nk1,+15006660031,Ann\nk2,nope,Bo\nk3,+15006660042,Cy\n")
    dnc = tmp_path / "dnc.txt"
    dnc.write_text("+15006660042\n")
    bad = run_cli("campaign", "create", "--contacts", str(contacts), "--message", "", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("ringez-worker campaign: --message")
    missing = run_cli("campaign", "create", "--contacts", "nowhere.csv", "--message", "x", env=env)
    assert missing.returncode == 2 and "nowhere.csv: no such file" in missing.stderr
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"phone\n\x86\xff\n")
    undecodable = run_cli(
        "campaign", "create", "--contacts", str(binary), "--message", "x", env=env
    )
    assert undecodable.returncode == 2 and "not UTF-8 text" in undecodable.stderr
    assert "Traceback" not in undecodable.stderr
    late = run_cli(
        "campaign", "create", "--contacts", str(contacts), "--message", "x",
        "--retry-after", "soon", env=env,
    )  # fmt: skip
    assert (
        late.returncode == 2 and "--retry-after" in late.stderr and "Traceback" not in late.stderr
    )
    created = run_cli(
        "campaign", "create", "--contacts", str(contacts), "--message", "Hi", "--dnc", str(dnc),
        "--max-concurrent", "1", "--retries", "0", "--ring-timeout", "2", "--name", "spring",
        env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    cid = created.stdout.strip()
    assert created.stderr.splitlines() == [
        f"ringez-worker campaign: {contacts} line 3: phone is not a phone number",
        f"ringez-worker campaign: {contacts} line 4: on the do-not-call list, not called",
    ]
    assert cid in run_cli("campaign", "list", env=env).stdout
    empty = tmp_path / "empty.csv"
    empty.write_text("phone\nnope\n")
    nothing = run_cli("campaign", "create", "--contacts", str(empty), "--message", "x", env=env)
    assert nothing.returncode == 2 and nothing.stderr.splitlines() == [
        f"ringez-worker campaign: {empty} line 2: phone is not a phone number",
        f"ringez-worker campaign: {empty}: no contact to call: every row was left out",
    ]
    assert run_cli("campaign", "list", env=env).stdout.count("cmp_") == 1  # nothing stored
    async with agent_stack(redis_url, agent_config=agents()) as stack:
        assert run_cli("campaign", "start", cid, env=env).returncode == 0
        again = run_cli("campaign", "start", cid, env=env)
        assert again.returncode == 2 and "cannot" in again.stderr
        await finished(redis_client, cid)
        assert len(stack.requests("/calls/initiate")) == 1
    status = run_cli("campaign", "status", cid, env=env)
    assert status.returncode == 0 and "done: 1/1 finished" in status.stdout, status.stdout
    assert "of 100.00 USD" in status.stdout
    exported = run_cli("campaign", "export", cid, "--format", "csv", env=env).stdout.splitlines()
    assert (
        exported[0] == "id,phone,name,status,attempts,digits,duration,cost,call_ids,reason,metadata"
    )
    assert exported[1].startswith("k1,+15006660031,Ann,done,1,1,")
    rows = orjson.loads(run_cli("campaign", "export", cid, "--format", "json", env=env).stdout)
    assert rows[0]["id"] == "k1" and rows[0]["call_ids"][0].startswith("call")
    gone = run_cli("campaign", "cancel", cid, env=env)
    assert gone.returncode == 2 and "is done already" in gone.stderr


async def test_erase_by_phone_and_by_call_reaches_campaign_contacts(redis_url, redis_client):
    csv = "id,phone,name\ne1,+15006660031,Ann\ne2,+15006660033,Bo\n"
    async with agent_stack(redis_url, agent_config=agents()) as stack:
        created = await api.create_campaign(redis_client, KEYS, csv, FAST)
        cid = created.campaign_id
        await api.start(redis_client, KEYS, cid)
        await finished(redis_client, cid)
        await drained(redis_client, stack)  # erase after the calls and their tasks are over
    rows = {r["id"]: r for r in await api.export(redis_client, KEYS, cid)}
    env = {"REDIS_URL": redis_url}
    by_phone = run_cli("erase", "--phone", "+15006660031", env=env)
    assert by_phone.returncode == 0, by_phone.stderr
    assert any(
        line.startswith("campaign contacts") and line.rsplit(None, 1)[1] == "1"
        for line in by_phone.stdout.splitlines()
    ), by_phone.stdout
    call = rows["e2"]["call_ids"][0]
    assert run_cli("erase", "--call", call, env=env).returncode == 0
    left = [k.decode() async for k in redis_client.scan_iter(match="*")]
    assert not [k for k in left if k.endswith(":contact:e1") or call in k], left
    assert not any(b"+15006660031" in v for v in await _all_values(redis_client, left))
    kept = await redis_client.hgetall(f"rz:campaign:{cid}:contact:e2")
    assert kept[b"phone"] == b"+15006660033" and call.encode() not in kept[b"calls"]
    again = run_cli("erase", "--phone", "+15006660031", env=env)
    assert {int(line.rsplit(None, 1)[1]) for line in again.stdout.splitlines()} == {0}


async def _all_values(redis_client, names: list[str]) -> list[bytes]:
    found = []
    for name in names:
        kind = (await redis_client.type(name)).decode()
        if kind == "hash":
            found += (await redis_client.hgetall(name)).values()
        elif kind == "string":
            found.append(await redis_client.get(name))
        elif kind == "set":
            found += await redis_client.smembers(name)
        elif kind == "zset":
            found += await redis_client.zrange(name, 0, -1)
    return found


async def drained(redis_client, stack) -> None:
    async def empty() -> bool:
        return await redis_client.zcard(stack.settings.queue_name) == 0

    await wait_for(empty, deadline_s=30, what="every job run")


async def test_a_402_pauses_the_campaign_with_its_reason_and_does_not_spin(redis_url, redis_client):
    # A wallet of 1.5 minutes: the first call bills one, the next dial is refused (402).
    csv = "id,phone\np1,+15006660031\np2,+15006660033\np3,+15006660035\n"
    async with agent_stack(
        redis_url, agent_config=agents(), sandbox_config={"initial_minutes": 1.5}
    ) as stack:
        created = await api.create_campaign(redis_client, KEYS, csv, {**FAST, "max_concurrent": 1})
        cid = created.campaign_id
        await api.start(redis_client, KEYS, cid)

        async def paused() -> bool:
            return (await api.status(redis_client, KEYS, cid))["state"] == "paused"

        await wait_for(paused, deadline_s=30, what="the campaign paused by the 402")
        await drained(redis_client, stack)
        status = await api.status(redis_client, KEYS, cid)
        assert "402" in status["reason"] and "insufficient" in status["reason"], status
        assert status["counts"] == {"done": 1, "pending": 2} and status["live"] == 0
        assert len(stack.requests("/calls/initiate")) == 2  # one call, one refusal, no more
        rows = {r["id"]: r for r in await api.export(redis_client, KEYS, cid)}
        assert rows["p2"]["attempts"] == 0  # the refused dial made no call: not an attempt


async def test_other_agents_leave_campaign_calls_and_sessions_alone(redis_url, redis_client):
    # A 5.5-minute wallet crosses the 5-minute balance.low threshold on the first call.
    config = agents(
        agents_enabled="support,escalation,recharge,campaigns", recharge_payment_token="tok_ok"
    )
    csv = "id,phone\ng1,+15006660031\ng2,+15006660033\n"
    async with agent_stack(
        redis_url, agent_config=config, sandbox_config={"initial_minutes": 5.5}
    ) as stack:
        created = await api.create_campaign(redis_client, KEYS, csv, FAST)
        await api.start(redis_client, KEYS, created.campaign_id)
        status = await finished(redis_client, created.campaign_id)
        await drained(redis_client, stack)
        events = [e.event for e in stack.sandbox.sandbox.events]
        assert "balance.low" in events
        assert stack.requests("/wallet/add-credits") == []  # recharge skipped the session
        calls = [c for c in stack.sandbox.sandbox.state.calls.values()]
        assert len(calls) == 2 and status["counts"] == {"done": 2}
        for call in calls:
            assert not await redis_client.exists(f"rz:summary:{call.call_id}")
            assert not await redis_client.exists(f"rz:call:{call.call_id}:opened")


async def test_campaign_series_reach_the_workers_metrics_endpoint(
    redis_url, redis_client, monkeypatch
):
    env = {"AGENTS_ENABLED": "campaigns"}
    async with runtime_stack(redis_url, monkeypatch, env=env) as stack:
        csv = "id,phone\nm1,+15006660031\nm2,+15006660013\n"
        created = await api.create_campaign(redis_client, KEYS, csv, {**FAST, "retries": 0})
        cid = created.campaign_id
        await api.start(redis_client, KEYS, cid)
        await finished(redis_client, cid)

        async def counted() -> bool:
            return f'ringez_campaign_live_calls{{campaign="{cid}"}} 0.0' in await stack.scrape()

        await wait_for(counted, deadline_s=10, what="the live gauge back at 0")
        text = await stack.scrape()
    label = f'{{campaign="{cid}"}}'
    for series, value in (
        ("ringez_campaign_calls_dialed_total", 2),
        ("ringez_campaign_calls_answered_total", 1),
        ("ringez_campaign_calls_completed_total", 1),
        ("ringez_campaign_calls_failed_total", 1),
    ):
        assert f"{series}{label} {value}.0" in text, series
    assert f"ringez_campaign_spend_total{label} 0.05" in text


async def test_outside_its_window_a_contact_waits_and_a_wake_is_scheduled(redis_url, redis_client):
    from datetime import UTC, datetime

    from ringez_worker.agents.campaign.window import is_open

    window = "09:00-17:00"
    zones = ["UTC", "Asia/Tokyo", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Auckland"]
    now = datetime.now(UTC)
    shut = next(z for z in zones if not is_open(window, z, now))
    open_ = next(z for z in zones if is_open(window, z, now))
    csv = f"id,phone,timezone\nw1,+15006660031,{shut}\nw2,+15006660033,{open_}\n"
    async with agent_stack(redis_url, agent_config=agents()) as stack:
        created = await api.create_campaign(redis_client, KEYS, csv, {**FAST, "window": window})
        cid = created.campaign_id
        await api.start(redis_client, KEYS, cid)

        async def open_one_done() -> bool:
            rows = {r["id"]: r for r in await api.export(redis_client, KEYS, cid)}
            return rows["w2"]["status"] == "done"

        await wait_for(open_one_done, deadline_s=30, what="the contact in an open zone called")
        wakes = [
            k
            async for k in redis_client.scan_iter(match=f"arq:job:task:campaigns.pass:wake:{cid}:*")
        ]
        assert wakes, "a pass scheduled for when the window opens"
        rows = {r["id"]: r for r in await api.export(redis_client, KEYS, cid)}
        assert rows["w1"]["status"] == "pending" and rows["w1"]["attempts"] == 0
        assert stack.requests("/calls/initiate", to_number="+15006660031") == []
        assert (await api.status(redis_client, KEYS, cid))["state"] == "running"


async def test_pause_stops_new_dials_at_once_and_the_live_call_finishes(redis_url, redis_client):
    # The first contact never answers: its call is live (ringing) until the ring timeout.
    csv = "id,phone\nq1,+15006660024\nq2,+15006660031\nq3,+15006660033\n"
    config = {**FAST, "max_concurrent": 1, "retries": 0, "ring_timeout": 2}
    async with agent_stack(
        redis_url, agent_config=agents(), sandbox_config={"no_answer_seconds": 30}
    ) as stack:
        created = await api.create_campaign(redis_client, KEYS, csv, config)
        cid = created.campaign_id
        await api.start(redis_client, KEYS, cid)

        async def ringing() -> bool:
            return (await api.status(redis_client, KEYS, cid))["counts"].get("calling") == 1

        await wait_for(ringing, deadline_s=20, what="the first call ringing")
        await api.pause(redis_client, KEYS, cid)

        async def ended() -> bool:
            status = await api.status(redis_client, KEYS, cid)
            return status["counts"].get("no_answer") == 1 and status["live"] == 0

        await wait_for(ended, deadline_s=20, what="the live call ended by its ring timeout")
        await drained(redis_client, stack)
        status = await api.status(redis_client, KEYS, cid)
        assert status["state"] == "paused" and status["counts"]["pending"] == 2
        assert len(stack.requests("/calls/initiate")) == 1
        await api.resume(redis_client, KEYS, cid)
        status = await finished(redis_client, cid)
        assert status["counts"] == {"done": 2, "no_answer": 1}


async def test_with_no_campaign_the_agent_costs_no_request_and_no_key(redis_url, redis_client):
    from ringez_worker.sandbox import start_scenario

    async with agent_stack(redis_url) as stack:  # the default agents, campaigns among them
        assert stack.config.enabled("campaigns")
        run = start_scenario(stack.sandbox.sandbox, "calm", stack.receiver_url)
        await run.task
        await drained(redis_client, stack)
        assert stack.requests("/calls/initiate") == [] and stack.requests("/sessions/create") == []
        assert [k async for k in redis_client.scan_iter(match="rz:campaign*")] == []


async def test_a_call_whose_webhooks_never_came_is_read_back_and_frees_its_slot(
    redis_url, redis_client
):
    # Every event goes to a closed port: the sweep must learn the call's end from Ringez.
    dead = "http://127.0.0.1:9/webhooks/ringez"
    async with agent_stack(
        redis_url,
        agent_config=agents(campaign_lost_call_grace_seconds=0),
        sandbox_config={"receiver_url": dead},
    ) as stack:
        csv = "id,phone\nl1,+15006660031\n"
        # Answered (the sandbox's retries to the dead port take ~2 s), never known to be:
        # the ring check hangs it up at 5 s, and 5 + 10 s after the dial a sweep reads it.
        config = {**FAST, "ring_timeout": 5, "max_duration": 10}
        created = await api.create_campaign(redis_client, KEYS, csv, config)
        await api.start(redis_client, KEYS, created.campaign_id)
        status = await finished(redis_client, created.campaign_id, deadline_s=40)
        assert len(stack.requests("/calls/initiate")) == 1
        reads = [
            e for e in stack.sandbox.app[REQUEST_LOG]
            if e["method"] == "GET" and e["path"].endswith(rows_call_id(stack))
        ]  # fmt: skip
        assert reads, "the call read back"
    rows = await api.export(redis_client, KEYS, created.campaign_id)
    assert (
        rows[0]["status"] == "done" and rows[0]["reason"] == "end not reported; read from the call"
    )
    assert status["live"] == 0 and status["reserved"] == 0 and status["spent"] == 0.05


def rows_call_id(stack: Any) -> str:
    """The one call the sandbox created."""
    (call,) = stack.sandbox.sandbox.state.calls.values()
    return call.call_id


async def test_status_on_a_terminal_draws_a_progress_bar(redis_url, redis_client):
    created = await api.create_campaign(redis_client, KEYS, "phone\n+15006660031\n", FAST)
    cid = created.campaign_id
    await redis_client.hset(f"rz:campaign:{cid}", "state", "done")  # nothing left to watch
    await redis_client.hset(f"rz:campaign:{cid}:contact:line2", "state", "done")
    code, out = on_a_terminal(["campaign", "status", cid], {"REDIS_URL": redis_url})
    assert code == 0 and "[" + "#" * 30 + "] 1/1" in out and "done" in out, out


def on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with its stdout on a pseudo-terminal; (exit code, what it drew)."""
    import os
    import pty
    import subprocess
    import sys

    from tests.processes import ROOT

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ringez_worker.worker.cli", *args],
            stdout=follower,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            cwd=ROOT,
            timeout=30,
        )
    finally:
        os.close(follower)
    out = os.read(leader, 65536).decode()
    os.close(leader)
    return proc.returncode, out


async def test_a_campaign_that_fills_the_budget_leaves_an_escalation_its_transfer(
    redis_url, redis_client
):
    # Issue 15: dialing stops at its ceiling (here 80 % of 60 requests: reserve 20 %), so
    # the live class still finds room. The escalation agent's own path (call status,
    # routing, transfer, all LIVE) goes out at once while the campaign waits for room.
    import time

    from ringez_worker.agents import AgentSettings, EscalationAgent
    from ringez_worker.api import Priority, RedisRateLimiter, RingezClient
    from ringez_worker.handlers import Context, parse_event
    from ringez_worker.logs import get_logger
    from ringez_worker.sandbox import start_scenario
    from tests.conftest import event_body

    limit, reserve = 60, 0.2
    contacts = "id,phone\n" + "".join(f"c{i},+150066603{i % 10}{i % 9 + 1}\n" for i in range(40))
    async with agent_stack(
        redis_url,
        agent_config=agents(),
        ringez_rate_limit=limit,
        ringez_rate_reserve_live=reserve,
    ) as stack:
        limiter = RedisRateLimiter.for_api_key(
            redis_client, "sk_test_agents", limit=limit, reserve_live=reserve
        )
        created = await api.create_campaign(
            redis_client, KEYS, contacts, {**FAST, "max_concurrent": 3, "retries": 0}
        )
        await api.start(redis_client, KEYS, created.campaign_id)

        async def dialing_is_full() -> bool:
            return await limiter.used() >= limiter.ceilings[Priority.DIAL]

        await wait_for(dialing_is_full, deadline_s=60, what="the campaign at dialing's ceiling")
        # An angry caller on a live call now; the escalation agent decides to transfer.
        run = start_scenario(stack.sandbox.sandbox, "angry", stack.receiver_url)
        call = stack.sandbox.sandbox.state.get_call(run.call_id)
        await wait_for(lambda: call.answered_at is not None, 20, what="the angry call live")
        body = event_body("transcription.updated", call_id=run.call_id, text="I want a manager")
        client = RingezClient.from_settings(stack.settings, redis=redis_client)
        try:
            ctx = Context(
                delivery_id="d" * 64,
                redis=redis_client,
                settings=stack.settings,
                log=get_logger("test"),
                client=client,
            )
            agent = EscalationAgent(AgentSettings(_env_file=None))
            started = time.monotonic()
            target = await agent.escalate(
                parse_event(orjson.loads(body), "d" * 64), ctx, reason="test"
            )
            took = time.monotonic() - started
        finally:
            await client.aclose()
        assert target is not None and call.transferred_to == target
        assert took < 1.0, took  # no wait for the window (it frees in an hour)
        # And the campaign is held back meanwhile, not refused: it waits for room.
        assert await limiter.try_acquire(Priority.DIAL) > 0
        await api.cancel(redis_client, KEYS, created.campaign_id)


async def test_a_session_opening_left_by_a_killed_worker_is_taken_over(redis_url, redis_client):
    # CI, stop 26: a worker SIGKILLed while opening the campaign's session left it
    # `opening`; the retried pass saw the claim fresh and returned, no sweep runs before
    # `running`, and all 40 contacts stayed pending. Here the dead worker's claim is 1 s
    # from stale: the pass must come back then and dial.
    async with agent_stack(redis_url, agent_config=agents()) as stack:
        created = await api.create_campaign(redis_client, KEYS, "id,phone\no1,+15006660031\n", FAST)
        cid = created.campaign_id
        dead_claim_ms = int(time.time() * 1000) - STALE_OPEN_MS + 1000
        await redis_client.hset(
            CampaignKeys(KEYS.prefix).campaign(cid),
            mapping={"state": "opening", "opening_ms": dead_claim_ms},
        )
        await schedule_pass(redis_client, KEYS, cid)  # the killed pass's retry
        status = await finished(redis_client, cid, deadline_s=20)
        assert status["counts"] == {"done": 1}
        assert len(stack.requests("/sessions/create")) == 1
