"""Receiver + arq worker + handlers, end to end on a real Redis."""

from __future__ import annotations

import asyncio
import collections

import orjson

from ringez_worker.handlers import CallCompleted, Context, Event, Router, Superseded
from ringez_worker.worker.envelope import delivery_id
from tests.conftest import event_body, running_worker, signed_headers, wait_for

PATH = "/webhooks/ringez"


async def test_each_event_reaches_each_matching_handler_exactly_once(
    receiver, settings, redis_client
):
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    router = Router()

    @router.on("call.completed")
    async def on_completed(event: CallCompleted, ctx: Context) -> None:
        assert isinstance(event, CallCompleted)
        assert ctx.delivery_id == event.delivery_id
        seen["completed", event.call_id] += 1

    @router.on("call.completed", "call.answered")
    async def on_two(event: Event, ctx: Context) -> None:
        seen["two:" + event.event, event.call_id] += 1

    @router.on("*")
    async def on_any(event: Event, ctx: Context) -> None:
        seen["any", event.call_id] += 1

    bodies = [event_body("call.completed", call_id=f"c{i}", duration=3) for i in range(50)]
    bodies += [event_body("call.answered", call_id=f"a{i}") for i in range(20)]
    bodies += [event_body("custom.event", call_id=f"x{i}") for i in range(5)]

    async with running_worker(settings, router):
        answers = await asyncio.gather(
            *(receiver.post(PATH, data=b, headers=signed_headers(b)) for b in bodies)
        )
        assert [r.status for r in answers] == [202] * len(bodies)
        # Redeliver everything: duplicates must never be dispatched again.
        again = await asyncio.gather(
            *(receiver.post(PATH, data=b, headers=signed_headers(b)) for b in bodies)
        )
        assert [r.status for r in again] == [200] * len(bodies)
        await wait_for(lambda: sum(seen.values()) >= 50 * 3 + 20 * 2 + 5, what="all handlers")
        await wait_for(_queue_empty(redis_client, settings.queue_name), what="every job to end")

    assert all(count == 1 for count in seen.values()), seen
    assert len(seen) == 50 * 3 + 20 * 2 + 5
    # Nothing failed: completion records go with the short TTL, not the replay one.
    done_ttl = await redis_client.ttl(f"rz:done:{delivery_id(bodies[0])}")
    assert 0 < done_ttl <= settings.done_record_ttl_seconds


async def test_a_failing_handler_is_retried_without_rerunning_the_others(
    receiver, settings, redis_client
):
    runs: collections.Counter[str] = collections.Counter()
    router = Router()

    @router.on("call.completed")
    async def steady(event: Event, ctx: Context) -> None:
        runs["steady"] += 1

    @router.on("call.completed")
    async def flaky(event: Event, ctx: Context) -> None:
        runs["flaky"] += 1
        if runs["flaky"] < 3:
            raise RuntimeError("not yet")

    body = event_body()
    async with running_worker(settings, router):
        resp = await receiver.post(PATH, data=body, headers=signed_headers(body))
        assert resp.status == 202
        await wait_for(lambda: runs["flaky"] >= 3, what="third try of the flaky handler")
        await wait_for(_queue_empty(redis_client, settings.queue_name), what="the job to finish")

    assert runs == {"steady": 1, "flaky": 3}
    assert await redis_client.hlen(settings.key_prefix + ":failed") == 0


def _queue_empty(redis_client, queue):
    async def check() -> bool:
        return await redis_client.zcard(queue) == 0

    return check


async def test_a_handler_that_always_fails_lands_in_the_failed_record(
    receiver, redis_url, redis_client
):
    from tests.conftest import make_settings

    settings = make_settings(redis_url, job_max_tries=3)
    router = Router()
    tries = collections.Counter()

    @router.on("call.failed")
    async def broken(event: Event, ctx: Context) -> None:
        tries["broken"] += 1
        raise ValueError("boom")

    @router.on("call.failed")
    async def fine(event: Event, ctx: Context) -> None:
        tries["fine"] += 1

    body = event_body("call.failed", reason="busy")
    async with running_worker(settings, router):
        resp = await receiver.post(PATH, data=body, headers=signed_headers(body))
        assert resp.status == 202

        async def recorded() -> bool:
            return await redis_client.hexists("rz:failed", delivery_id(body))

        await wait_for(recorded, what="the failed-events record")

    record = orjson.loads(await redis_client.hget("rz:failed", delivery_id(body)))
    assert tries == {"broken": 3, "fine": 1}
    assert record["attempts"] == 3
    assert record["event"] == "call.failed"
    assert list(record["handlers"]) == [f"{__name__}.{broken.__qualname__}@call.failed"]
    assert "ValueError: boom" in record["handlers"][f"{__name__}.{broken.__qualname__}@call.failed"]
    assert record["body"] == body.decode()
    # What succeeded stays recorded as long as a replay may come (not the short success TTL).
    done_ttl = await redis_client.ttl(f"rz:done:{delivery_id(body)}")
    assert settings.done_record_ttl_seconds < done_ttl <= settings.handler_state_ttl_seconds


async def test_a_handler_that_hangs_is_timed_out_retried_then_recorded(
    receiver, redis_url, redis_client
):
    from tests.conftest import make_settings

    settings = make_settings(redis_url, job_max_tries=2, job_timeout_seconds=0.2)
    router = Router()
    started = collections.Counter()

    @router.on("call.completed")
    async def hangs(event: Event, ctx: Context) -> None:
        started["hangs"] += 1
        await asyncio.Event().wait()

    body = event_body()
    async with running_worker(settings, router):
        assert (await receiver.post(PATH, data=body, headers=signed_headers(body))).status == 202

        async def recorded() -> bool:
            return await redis_client.hexists("rz:failed", delivery_id(body))

        await wait_for(recorded, what="the timed-out delivery in the failed-events record")
    record = orjson.loads(await redis_client.hget("rz:failed", delivery_id(body)))
    (error,) = record["handlers"].values()
    assert "TimeoutError" in error
    assert started["hangs"] == 2


async def test_a_job_arq_gives_up_on_is_recorded_not_dropped(receiver, settings, redis_client):
    router = Router()
    ran = collections.Counter()

    @router.on("call.completed")
    async def never(event: Event, ctx: Context) -> None:
        ran["never"] += 1

    body = event_body()
    assert (await receiver.post(PATH, data=body, headers=signed_headers(body))).status == 202
    # As if workers had crashed on this job over and over: arq's try counter is spent.
    await redis_client.set(f"arq:retry:{delivery_id(body)}", 100)
    async with running_worker(settings, router):

        async def recorded() -> bool:
            return await redis_client.hexists("rz:failed", delivery_id(body))

        await wait_for(recorded, what="the abandoned job in the failed-events record")
    record = orjson.loads(await redis_client.hget("rz:failed", delivery_id(body)))
    assert list(record["handlers"]) == ["<worker>"]
    assert record["body"] == body.decode()
    assert ran["never"] == 0
    assert await redis_client.zcard(settings.queue_name) == 0


async def test_a_superseded_handler_defers_the_job_and_runs_again(receiver, settings, redis_client):
    # A handler that finds another attempt owns its work: no completion record, no
    # failure record and no try used, and the job is deferred, not ended: the owner may
    # be a second run of this same job that fails and needs the job kept (the chaos run
    # lost a delivery when the superseded run ended it). Run again, it completes.
    router = Router()
    calls = {"stale": 0}

    @router.on("call.completed")
    async def stale(event: Event, ctx: Context) -> None:
        calls["stale"] += 1
        if calls["stale"] == 1:
            raise Superseded("taken over")

    @router.on("call.completed")
    async def fine(event: Event, ctx: Context) -> None:
        return None

    body = event_body("call.completed")
    done_key = f"rz:done:{delivery_id(body)}"
    names = {f"{__name__}.{f.__qualname__}@call.completed" for f in (stale, fine)}
    async with running_worker(settings, router):
        resp = await receiver.post(PATH, data=body, headers=signed_headers(body))
        assert resp.status == 202

        async def both_done() -> bool:
            return {n.decode() for n in await redis_client.hkeys(done_key)} == names

        await wait_for(both_done, deadline_s=20, what="both handlers done, stale on its rerun")
        await wait_for(_queue_empty(redis_client, settings.queue_name), what="the job to end")
    assert calls["stale"] == 2
    assert not await redis_client.hexists("rz:failed", delivery_id(body))
    deferrals = await redis_client.hgetall(f"rz:deferrals:{delivery_id(body)}")
    assert deferrals.get(b"count") == b"1", deferrals  # a deferral, not one of the tries
