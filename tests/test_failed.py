"""The failed-events record and `ringez-worker failed list|show|replay|purge`."""

from __future__ import annotations

import collections

import orjson

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.worker.envelope import delivery_id
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for
from tests.processes import run_cli

PATH = "/webhooks/ringez"


class Permanent(Exception):
    retryable = False


async def test_failed_list_show_replay_purge(receiver, redis_url, redis_client):
    settings = make_settings(redis_url, job_max_tries=2)
    env = {"REDIS_URL": redis_url}
    runs: collections.Counter[str] = collections.Counter()
    broken = {"yes": True}
    router = Router()

    @router.on("call.completed")
    async def flaky(event: Event, ctx: Context) -> None:
        runs["flaky"] += 1
        if broken["yes"]:
            raise RuntimeError("downstream is down")

    @router.on("call.completed")
    async def steady(event: Event, ctx: Context) -> None:
        runs["steady"] += 1

    body = event_body()
    did = delivery_id(body)

    async def recorded() -> bool:
        return await redis_client.hexists("rz:failed", did)

    async with running_worker(settings, router):
        assert (await receiver.post(PATH, data=body, headers=signed_headers(body))).status == 202
        await wait_for(recorded, what="the failed record")
        assert runs == {"flaky": 2, "steady": 1}

        listed = run_cli("failed", "list", env=env)
        assert listed.returncode == 0
        assert did[:16] in listed.stdout and "flaky" in listed.stdout

        shown = run_cli("failed", "show", did[:12], env=env)
        record = orjson.loads(shown.stdout)
        assert record["delivery_id"] == did
        assert record["attempts"] == 2
        assert "RuntimeError: downstream is down" in next(iter(record["handlers"].values()))

        broken["yes"] = False
        replayed = run_cli("failed", "replay", did, env=env)
        assert replayed.returncode == 0, replayed.stderr

        async def cleared() -> bool:
            return not await redis_client.hexists("rz:failed", did)

        await wait_for(cleared, what="the replay to clear the record")

    # Only the failed handler ran again.
    assert runs == {"flaky": 3, "steady": 1}
    assert run_cli("failed", "list", env=env).stdout.strip() == "no failed events"


async def test_non_retryable_errors_skip_the_retries(receiver, redis_url, redis_client):
    settings = make_settings(redis_url, job_max_tries=5)
    runs: collections.Counter[str] = collections.Counter()
    router = Router()

    @router.on("call.completed")
    async def refused(event: Event, ctx: Context) -> None:
        runs["refused"] += 1
        raise Permanent("402 insufficient balance")

    body = event_body()
    async with running_worker(settings, router):
        assert (await receiver.post(PATH, data=body, headers=signed_headers(body))).status == 202

        async def recorded() -> bool:
            return await redis_client.hexists("rz:failed", delivery_id(body))

        await wait_for(recorded, what="the failed record")
    assert runs["refused"] == 1
    env = {"REDIS_URL": redis_url}
    assert run_cli("failed", "purge", "--all", env=env).stdout.strip() == "purged 1"
    assert await redis_client.hlen("rz:failed") == 0


async def test_replaying_a_delivery_the_worker_gave_up_on_skips_what_succeeded(
    receiver, redis_url, redis_client
):
    # A `<worker>` record (arq gave up: crash loop, timeouts) names no handler: the
    # replay runs every handler that has not succeeded, not all of them.
    settings = make_settings(redis_url)
    runs: collections.Counter[str] = collections.Counter()
    router = Router()

    @router.on("call.completed")
    async def once(event: Event, ctx: Context) -> None:
        runs["once"] += 1

    @router.on("call.completed")
    async def pending(event: Event, ctx: Context) -> None:
        runs["pending"] += 1

    body = event_body()
    did = delivery_id(body)
    once_name = f"{__name__}.{once.__qualname__}@call.completed"
    # What a crash loop leaves: one handler recorded done, the delivery given up on.
    await redis_client.hset(f"rz:done:{did}", once_name, 1)
    record = {"delivery_id": did, "event": "call.completed", "body": body.decode()}
    record["handlers"] = {"<worker>": "worker gave up: crashed or timed out on every try"}
    await redis_client.hset("rz:failed", did, orjson.dumps({**record, "attempts": 3}))

    async with running_worker(settings, router):
        replayed = run_cli("failed", "replay", did, env={"REDIS_URL": redis_url})
        assert replayed.returncode == 0, replayed.stderr

        async def cleared() -> bool:
            return not await redis_client.hexists("rz:failed", did)

        await wait_for(cleared, what="the replay to clear the record")
    assert runs == {"pending": 1}


def test_bad_records_are_reported_one_by_one_and_skipped(redis_url, monkeypatch, capsys):
    # Before the fix one unparsable value made `failed list` and `replay --all` die with a
    # traceback, and replaying a record with a corrupted body queued a job that could
    # only fail, while the command said "replayed".
    import asyncio

    import redis
    from redis.asyncio import Redis

    from ringez_worker.worker import cli
    from ringez_worker.worker.dispatch import Dispatcher

    settings = make_settings(redis_url)
    body = event_body(call_id="good")
    good = delivery_id(body)

    async def record_good() -> None:
        client = Redis.from_url(redis_url)
        await Dispatcher(Router(), settings, client).abandon(good, body.decode(), "gave up", 3)
        await client.aclose()

    asyncio.run(record_good())
    complete = {"event": "call.completed", "handlers": {"h": "E"}, "attempts": 1}
    bad = {
        "a" * 64: b"{not json",
        "b" * 64: b'["a", "list"]',
        "c" * 64: orjson.dumps({"delivery_id": "c" * 64, "handlers": {"h": "E"}}),
        "d" * 64: orjson.dumps({**complete, "delivery_id": "d" * 64, "body": "garbage"}),
    }
    sync = redis.Redis.from_url(redis_url)
    sync.hset("rz:failed", mapping=bad)
    monkeypatch.setenv("REDIS_URL", redis_url)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("failed", "list")
    assert code == 1 and good[:16] in out
    lines = err.splitlines()
    assert len(lines) == 4 and "Traceback" not in err
    for field, reason in zip(
        sorted(bad), ["not JSON", "not a JSON object", "missing body", "body"], strict=True
    ):
        assert any(field[:16] in line and reason in line for line in lines), (field, err)

    code, out, err = run("failed", "show", "dddd")
    assert code == 1 and "body is not JSON" in err and not out

    code, out, err = run("failed", "replay", "dddd")
    assert code == 1 and "cannot replay" in err and "replayed" not in out
    assert sync.zcard(settings.queue_name) == 0

    code, out, err = run("failed", "replay", "--all")
    assert code == 1 and f"replayed {good[:16]}" in out and len(err.splitlines()) == 4
    assert [m.decode().split(":")[0] for m in sync.zrange(settings.queue_name, 0, -1)] == [good]

    assert run("failed", "purge", "aaaa")[:2] == (0, "purged 1\n")
    assert not sync.hexists("rz:failed", "a" * 64)
    sync.close()


async def test_replaying_a_handler_that_no_longer_exists_keeps_the_record(
    receiver, redis_url, redis_client
):
    # Before the fix the replay ran nothing, counted as a success and cleared the record.
    settings = make_settings(redis_url)
    runs: collections.Counter[str] = collections.Counter()
    router = Router()

    @router.on("call.completed")
    async def still_here(event: Event, ctx: Context) -> None:
        runs["still_here"] += 1

    body = event_body(call_id="renamed")
    did = delivery_id(body)
    here = f"{__name__}.{still_here.__qualname__}@call.completed"
    gone = "myapp.handlers.old_name@call.completed"
    record = {"delivery_id": did, "event": "call.completed", "body": body.decode()}
    record["handlers"] = {here: "TimeoutError", gone: "ValueError"}
    await redis_client.hset("rz:failed", did, orjson.dumps({**record, "attempts": 3}))

    async with running_worker(settings, router):
        replayed = run_cli("failed", "replay", did, env={"REDIS_URL": redis_url})
        assert replayed.returncode == 0, replayed.stderr

        async def rerecorded() -> bool:
            raw = await redis_client.hget("rz:failed", did)
            return raw is not None and list(orjson.loads(raw)["handlers"]) == [gone]

        await wait_for(rerecorded, what="the record to hold only the missing handler")
    assert runs == {"still_here": 1}
    handlers = orjson.loads(await redis_client.hget("rz:failed", did))["handlers"]
    assert "no such handler" in handlers[gone]
