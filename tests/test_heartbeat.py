"""Presence and heartbeats do not depend on free slots; `status` says how fresh it is."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.worker import cli
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for
from tests.processes import Proc

PATH = "/webhooks/ringez"


async def presence(redis_client) -> list[dict]:
    records = []
    async for key in redis_client.scan_iter(match="rz:worker:*"):
        raw = await redis_client.get(key)
        if raw:
            records.append(orjson.loads(raw))
    return records


async def test_a_saturated_worker_keeps_its_presence(receiver, redis_url, redis_client):
    # Before the fix, with every slot busy the poll loop waited for a slot and never
    # refreshed presence: the record expired after its TTL while the worker was working.
    ttl = 1.0
    settings = make_settings(redis_url, worker_max_jobs=2, worker_presence_ttl_seconds=ttl)
    running = 0
    release = asyncio.Event()
    router = Router()

    @router.on("call.completed")
    async def busy(event: Event, ctx: Context) -> None:
        nonlocal running
        running += 1
        await release.wait()

    # Queued before the worker starts, so its first claim fills every slot and leaves a
    # backlog: the state in which the poll loop only waits for slots to free.
    for i in range(4):
        body = event_body(call_id=f"busy{i}")
        assert (await receiver.post(PATH, data=body, headers=signed_headers(body))).status == 202
    async with running_worker(settings, router):
        try:
            await wait_for(lambda: running == 2, what="every slot to be busy")
            saturated_at = time.time() * 1000

            async def refreshed_long_after() -> bool:
                records = await presence(redis_client)
                assert records, "the presence record expired while the worker was busy"
                if records[0]["at_ms"] > saturated_at:
                    assert records[0]["running"] == 2
                return records[0]["at_ms"] > saturated_at + 3 * ttl * 1000

            await wait_for(refreshed_long_after, deadline_s=15, interval=0.05, what="presence")
        finally:
            release.set()


async def test_status_marks_a_killed_workers_record_stale(redis_url, redis_client, capsys):
    # Before the fix, `status` counted a SIGKILLed worker (and its running jobs) as alive
    # until its record expired, and said nothing about how old the figures were.
    env = {"REDIS_URL": redis_url, "WORKER_METRICS_PORT": "0", "WORKER_PRESENCE_TTL_SECONDS": "4"}
    proc = Proc("worker", env=env)
    try:
        proc.wait_for_line("worker.started")

        async def present() -> bool:
            return bool(await presence(redis_client))

        await wait_for(present, what="the worker's presence record")
    finally:
        proc.stop(signal.SIGKILL)
    settings = make_settings(redis_url)

    async def reported_stale() -> bool:
        await cli._status(settings)
        out = capsys.readouterr().out
        return "STALE" in out and "workers alive   0 (1 stale, not counted)" in out

    await wait_for(reported_stale, deadline_s=10, interval=0.1, what="status to say stale")
    assert await presence(redis_client), "the record had expired: the test proved nothing"


async def test_a_free_slot_takes_a_new_job_behind_running_ones(receiver, redis_url):
    # A running job stays in the queue's sorted set. The poll asked Redis for as many due
    # jobs as it had free slots, oldest first, so with one slot free it was handed the
    # job it was already running, claimed nothing, and polled again at once: newer jobs
    # waited for the long one to end while the loop spun.
    settings = make_settings(redis_url, worker_max_jobs=2)
    ran: list[str] = []
    release = asyncio.Event()
    router = Router()

    @router.on("call.completed")
    async def work(event: Event, ctx: Context) -> None:
        ran.append(event.data.call_id)
        if event.data.call_id == "long":
            await release.wait()

    async def send(call_id: str) -> None:
        body = event_body(call_id=call_id)
        assert (await receiver.post(PATH, data=body, headers=signed_headers(body))).status == 202

    async with running_worker(settings, router):
        try:
            await send("long")
            await wait_for(lambda: "long" in ran, what="the long job to start")
            await send("short")
            await wait_for(lambda: "short" in ran, what="the second slot to take a job")
            await send("later")
            await wait_for(lambda: "later" in ran, what="the freed slot to take the next job")
        finally:
            release.set()
