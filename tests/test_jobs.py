"""The one job envelope: tasks the service gives itself run like webhooks (retries,
completion records, the failed-events record, replay), and jobs queued by 0.1 still run."""

from __future__ import annotations

import collections
import time

import orjson

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.jobs import TASK, WEBHOOK, Job, job_bytes, schedule_task
from ringez_worker.keys import Keys
from ringez_worker.worker import failed
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for

KEYS = Keys()


def test_a_job_queued_by_0_1_reads_as_a_webhook_delivery():
    # The 0.1 receiver's record: positional (id, body, received_ms), no kind.
    raw = orjson.dumps({"t": 1, "f": "handle_event", "a": ["d1", "{}", 5], "k": {}, "et": 5})
    assert Job.from_record(raw) == Job(WEBHOOK, "d1", "{}", 5, None)
    # ...and a webhook job today is still exactly that record.
    assert orjson.loads(job_bytes("d1", b"{}", 5)) == orjson.loads(raw)


async def test_a_scheduled_task_runs_its_handler_once_and_a_webhook_cannot_reach_it(
    receiver, settings, redis_client
):
    seen: collections.Counter[str] = collections.Counter()
    router = Router()

    @router.on_task("quality.check")
    async def check(event: Event, ctx: Context) -> None:
        seen[event.call_id or ""] += 1

    @router.on("*")
    async def every_webhook(event: Event, ctx: Context) -> None:
        seen["webhook:" + event.event] += 1

    async with running_worker(settings, router):
        assert await schedule_task(redis_client, KEYS, "quality.check", {"call_id": "c1"})
        # A webhook naming the task is routed to no task handler.
        body = event_body("task:quality.check", call_id="evil")
        resp = await receiver.post("/webhooks/ringez", data=body, headers=signed_headers(body))
        assert resp.status == 202
        await wait_for(lambda: seen["c1"] == 1, what="the task to run")
        await wait_for(lambda: seen["webhook:task:quality.check"] == 1, what="the webhook")
    assert seen["evil"] == 0
    assert seen["webhook:task:quality.check"] == 1  # the `*` handler saw the webhook...


async def test_a_keyed_task_is_pending_at_most_once(settings, redis_client):
    runs: list[float] = []
    router = Router()

    @router.on_task("poll")
    async def poll(event: Event, ctx: Context) -> None:
        runs.append(time.time())

    first = await schedule_task(redis_client, KEYS, "poll", {}, key="call_1", delay_seconds=0.3)
    again = [
        await schedule_task(redis_client, KEYS, "poll", {}, key="call_1", delay_seconds=0.3)
        for _ in range(5)
    ]
    assert first and not any(again)
    async with running_worker(settings, router):
        await wait_for(lambda: len(runs) == 1, what="the one pending task")

        # Once it has run the key is free: the next check of that call can be scheduled.
        async def queued_again() -> bool:
            return await schedule_task(redis_client, KEYS, "poll", {}, key="call_1")

        await wait_for(queued_again, what="the key to be free again")
        await wait_for(lambda: len(runs) == 2, what="the second check")


async def test_a_failing_task_lands_in_the_record_and_replays_as_a_task(redis_url, redis_client):
    settings = make_settings(redis_url, job_max_tries=2, retry_backoff_seconds=0.01)
    runs: collections.Counter[str] = collections.Counter()
    router = Router()

    @router.on_task("report.render")
    async def render(event: Event, ctx: Context) -> None:
        runs["render"] += 1
        if runs["render"] <= 2:
            raise RuntimeError("not yet")

    async with running_worker(settings, router):
        assert await schedule_task(redis_client, KEYS, "report.render", {"day": "2026-12-01"})
        await wait_for(lambda: runs["render"] == 2, what="both tries")

        async def recorded() -> list:
            return (await failed.list_failed(redis_client, KEYS)) or []

        await wait_for(recorded, what="the failed-events record")
        (record,) = await failed.list_failed(redis_client, KEYS)
        assert record["kind"] == TASK and record["event"] == "task:report.render"
        assert await failed.replay(redis_client, KEYS, record["delivery_id"], 60_000)
        await wait_for(lambda: runs["render"] == 3, what="the replayed task")

        async def cleared() -> bool:
            return not await redis_client.hlen(KEYS.failed)

        await wait_for(cleared, what="the record to clear after the replay")
