"""`ringez-worker erase`: every store filled through the real service (sandbox scenarios
played into the real receiver and workers, a failed event, a queued task), one call and
one session erased, then every key in Redis read back: nothing of them is left, all of
the others is."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from redis.asyncio import Redis

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.jobs import schedule_task
from ringez_worker.keys import Keys
from ringez_worker.sandbox import start_scenario
from tests.agent_stack import agent_stack
from tests.conftest import event_body, running_worker, signed_headers, wait_for
from tests.processes import run_cli

pytestmark = pytest.mark.timeout(120)


async def dump(redis: Redis) -> dict[bytes, set[bytes]]:
    """Every key with its items (a string's value, a hash's field=value, a list's, set's
    or sorted set's members, a stream's entries), each as bytes to search."""
    out: dict[bytes, set[bytes]] = {}
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            items = {await redis.get(key) or b""}
        elif kind == "hash":
            items = {k + b"=" + v for k, v in (await redis.hgetall(key)).items()}
        elif kind == "list":
            items = set(await redis.lrange(key, 0, -1))
        elif kind == "set":
            items = set(await redis.smembers(key))
        elif kind == "zset":
            items = set(await redis.zrange(key, 0, -1))
        elif kind == "stream":
            items = {
                entry_id + b" " + b" ".join(k + b"=" + v for k, v in fields.items())
                for entry_id, fields in await redis.xrange(key)
            }
        else:
            items = set()
        out[key] = items
    return out


def mentions(snapshot: dict[bytes, set[bytes]], *needles: str) -> set[tuple[bytes, bytes]]:
    """(key, item) pairs whose key or item contains any of `needles`."""
    wanted = [n.encode() for n in needles]
    return {
        (key, item)
        for key, items in snapshot.items()
        for item in items | {b""}
        if any(n in key or n in item for n in wanted)
    }


def erase(redis_url: str, *args: str) -> dict[str, int]:
    done = run_cli("erase", *args, env={"REDIS_URL": redis_url})
    assert done.returncode == 0, done.stderr
    rows = [line.rsplit(None, 1) for line in done.stdout.splitlines()]
    return {name.strip(): int(count) for name, count in rows}


async def test_erase_one_call_and_one_session_leaves_the_others(redis_url, redis_client):
    keys = Keys()
    # The quality monitor too (opt-in): its record, its checks' runs in the delivery log.
    agents = {"agents_enabled": "support,escalation,recharge,quality", "quality_poll_seconds": 0.05}
    async with agent_stack(redis_url, agent_config=agents) as stack:
        sb = stack.sandbox.sandbox
        runs = {}
        for label, scenario in (
            ("call", "poor_quality"),  # erased by --call
            ("session", "low_balance"),  # erased by --session: its call and its charge
            ("other_call", "poor_quality"),
            ("other_session", "low_balance"),
        ):
            runs[label] = start_scenario(sb, scenario, stack.receiver_url)
            await asyncio.wait_for(runs[label].task, 30)
        gone_call, gone_session = runs["call"].call_id, runs["session"].session_id
        gone_session_call = runs["session"].call_id
        kept = [runs[k].call_id for k in ("other_call", "other_session")]
        kept += [runs[k].session_id for k in ("other_call", "other_session")]

        # A failed event for each side: a balance.low of a session the API does not know
        # (the recharge agent's balance read gets a 404, which no retry can mend).
        async with aiohttp.ClientSession() as http:
            for n, call in enumerate((gone_call, kept[0])):
                body = event_body(
                    "balance.low",
                    call_id=call,
                    session_id=f"sess_unknown_{n}",
                    balance={"minutes": 1, "value": 0.05, "currency": "USD"},
                )
                async with http.post(
                    stack.receiver_url, data=body, headers=signed_headers(body)
                ) as resp:
                    assert resp.status == 202
        # A task queued for later about each call (a pending check, say).
        for call in (gone_call, kept[0]):
            await schedule_task(
                redis_client, keys, "check", {"call_id": call}, key=call, delay_seconds=3600
            )

        async def settled() -> bool:
            due = await redis_client.zcount(keys.queue, "-inf", "(+inf")
            summaries = [await redis_client.exists(keys.summary(r.call_id)) for r in runs.values()]
            return (
                await redis_client.hlen(keys.failed) == 2
                and due == 2  # only the two tasks, an hour away
                and all(summaries)
                and len(stack.charges(gone_session)) == 1
                and len(stack.charges(kept[3])) == 1
            )

        await wait_for(settled, deadline_s=30, what="every event handled and every store filled")

    before = await dump(redis_client)
    gone = (gone_call, gone_session, gone_session_call)
    assert mentions(before, gone_call) and mentions(before, gone_session)
    # Every store the scenarios fill holds something of the subjects before erasing.
    families = {k.split(b":")[1] for k, _ in mentions(before, *gone) if k.startswith(b"rz:")}
    assert {b"log", b"failed", b"call", b"summary", b"recharge"} <= families
    assert any(k.startswith(b"arq:job:") for k, _ in mentions(before, gone_call))
    assert any(b":quality:record" in k for k, _ in mentions(before, gone_call))
    kept_before = mentions(before, *kept)

    by_call = erase(redis_url, "--call", gone_call)
    by_session = erase(redis_url, "--session", gone_session)
    assert by_call["delivery log"] > 0 and by_call["failed events"] == 1
    assert by_call["call summaries"] == 1 and by_call["queued jobs"] == 1
    assert by_call["per-call agent state"] > 0
    assert by_session["charge records"] == 1 and by_session["recharge state"] > 0
    assert by_session["call summaries"] == 1 and by_session["delivery log"] > 0

    after = await dump(redis_client)
    assert mentions(after, *gone) == set()
    assert kept_before <= mentions(after, *kept)
    # Nothing else went: only keys of the subjects, and completion records (keyed by
    # delivery id alone, gone with their deliveries).
    theirs = {k for k, _ in mentions(before, *gone)}
    for key in set(before) - set(after):
        assert key in theirs or key.startswith((b"rz:done:", b"rz:deferrals:")), key

    # Idempotent: a second run finds nothing and reports zero everywhere.
    assert set(erase(redis_url, "--call", gone_call).values()) == {0}
    assert set(erase(redis_url, "--session", gone_session).values()) == {0}


async def test_erase_by_phone_removes_only_the_records_holding_it(
    receiver, settings, redis_client, redis_url
):
    router = Router()

    @router.on("call.failed")
    async def broken(event: Event, ctx: Context) -> None:
        raise ValueError("no")

    bodies = {
        number: event_body("call.failed", call_id=f"call_{n}", to_number=number, reason="busy")
        for n, number in enumerate(("+14155550123", "+14155550999"))
    }
    async with running_worker(settings.model_copy(update={"job_max_tries": 1}), router):
        for body in bodies.values():
            resp = await receiver.post("/webhooks/ringez", data=body, headers=signed_headers(body))
            assert resp.status == 202

        async def recorded() -> bool:
            return await redis_client.hlen("rz:failed") == 2

        await wait_for(recorded, what="two failed records")

    done = run_cli("erase", "--phone", "+14155550123", env={"REDIS_URL": redis_url})
    assert done.returncode == 0
    assert "ringez-worker erase --call call_0" in done.stderr  # the call it belonged to
    removed = {n.strip(): int(c) for n, c in (r.rsplit(None, 1) for r in done.stdout.splitlines())}
    assert removed["failed events"] == 1 and removed["delivery log"] >= 1
    after = await dump(redis_client)
    assert mentions(after, "+14155550123") == set()
    assert mentions(after, "+14155550999")
    assert set(erase(redis_url, "--phone", "+14155550123").values()) == {0}
    bad = run_cli("erase", "--phone", "4155550123", env={"REDIS_URL": redis_url})
    assert bad.returncode == 2 and "E.164" in bad.stderr


async def test_ids_are_literal_in_patterns_and_a_session_named_charge_stays_its_own(
    redis_client,
):
    from ringez_worker.erasure import Subject
    from ringez_worker.worker.erase import erase as erase_subject

    keys = Keys()
    for name in ("rz:call:a*:ended", "rz:call:ab:ended", "rz:summary:a*", "rz:summary:ab"):
        await redis_client.set(name, "{}")
    await redis_client.set("rz:recharge:charge:recharge:sess_x:0", '{"session_id": "sess_x"}')
    await redis_client.set("rz:recharge:charge:episode", "1")  # session "charge"'s episode

    removed = await erase_subject(redis_client, keys, Subject(calls={"a*"}))
    assert removed["per-call agent state"] == 1 and removed["call summaries"] == 1
    assert await redis_client.exists("rz:call:ab:ended", "rz:summary:ab") == 2

    removed = await erase_subject(redis_client, keys, Subject(sessions={"charge"}))
    assert removed["recharge state"] == 1 and removed["charge records"] == 0
    assert await redis_client.exists("rz:recharge:charge:recharge:sess_x:0")


async def test_erase_by_session_reaches_callback_requests_and_single_session_reports(
    redis_url, redis_client, tmp_path
):
    # The table says --session reaches these two places; the combined test above fills
    # neither (the callback queue is opt-in, a report is made on demand).
    from ringez_worker.report.store import save_report
    from tests import test_callbacks as cb

    keys = Keys()
    async with agent_stack(
        redis_url,
        agent_config=cb.agents_config(),
        callbacks_token=cb.TOKEN,
        sandbox_config={"talk_seconds": 0.05},
    ) as stack:
        await cb.roster(redis_client, tmp_path, "- {id: ana, number: '+14155550900'}\n")
        session = stack.config.callback_session_id
        _, answer = await cb.post(cb.callbacks_url(stack), cb.request(61))
        rid = answer["request_id"]

        async def done() -> bool:
            return (await cb.states(redis_client, [rid]))["done"] == 1

        await wait_for(done, deadline_s=30, what="the callback done")
        await wait_for(
            lambda: _drained(redis_client, stack.settings.queue_name), 30, what="queue drained"
        )
    for report_id, of in (("mine", session), ("other", "sess_other"), ("all", None)):
        meta = {"day": "2026-12-01", "session_id": of}
        await save_report(
            redis_client, keys, report_id, meta, "<html></html>", keep=5, max_bytes=4096
        )

    counts = erase(redis_url, "--session", session)
    assert counts["callback requests"] >= 1 and counts["daily reports"] == 1, counts
    assert not await redis_client.exists(f"rz:callback:{rid}")
    assert not await redis_client.exists(keys.report("mine"))
    assert await redis_client.exists(keys.report("other")) and await redis_client.exists(
        keys.report("all")
    )
    assert [r.decode() for r in await redis_client.lrange(keys.reports, 0, -1)] == ["all", "other"]
    again = erase(redis_url, "--session", session)
    assert again["callback requests"] == 0 and again["daily reports"] == 0


async def _drained(redis: Redis, queue: str) -> bool:
    return await redis.zcard(queue) == 0


# Key families kept without a TTL, each bounded another way (README, "Privacy").
BOUNDED_WITHOUT_TTL = {
    b"rz:log": "a stream trimmed by DELIVERY_LOG_MAX_ENTRIES and DELIVERY_LOG_RETENTION",
    b"rz:failed": "FAILED_MAX_RECORDS and FAILED_RETENTION_SECONDS (the sweeper)",
    b"rz:failed:age": "the failed-events record's index, trimmed with it",
    b"ringez:queue": "jobs leave it when they end",
    b"ringez:queue:health-check": "arq's own, rewritten by each worker",
    b"rz:callbacks:": "the queue's indexes (ids leave as requests move) and your roster",
    b"rz:recharge:charges": "an index of charge records, trimmed by their retention",
}


async def test_every_key_the_scenarios_write_expires_or_is_bounded(
    redis_url, redis_client, tmp_path
):
    from tests import test_callbacks as cb

    agents = {
        **cb.agents_config(agents_enabled="support,escalation,recharge,quality,callbacks"),
        "quality_poll_seconds": 0.05,
    }
    async with agent_stack(
        redis_url,
        agent_config=agents,
        callbacks_token=cb.TOKEN,
        sandbox_config={"talk_seconds": 0.05},
    ) as stack:
        await cb.roster(redis_client, tmp_path, "- {id: ana, number: '+14155550900'}\n")
        for scenario in ("calm", "angry", "low_balance", "poor_quality"):
            await asyncio.wait_for(
                start_scenario(stack.sandbox.sandbox, scenario, stack.receiver_url).task, 30
            )
        _, answer = await cb.post(cb.callbacks_url(stack), cb.request(71))

        async def done() -> bool:
            return (await cb.states(redis_client, [answer["request_id"]]))["done"] == 1

        await wait_for(done, deadline_s=30, what="the callback done")
        await wait_for(
            lambda: _drained(redis_client, stack.settings.queue_name), 30, what="queue drained"
        )
    unbounded = []
    async for key in redis_client.scan_iter(match="*", count=1000):
        if await redis_client.pttl(key) > 0:
            continue
        if any(key == f or (f.endswith(b":") and key.startswith(f)) for f in BOUNDED_WITHOUT_TTL):
            continue
        unbounded.append(key)
    assert unbounded == [], sorted(unbounded)
