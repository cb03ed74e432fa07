"""Routing and loading user handlers (module paths, entry points)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from ringez_worker.handlers import (
    ANY,
    CallCompleted,
    Context,
    Event,
    RingezNotConfigured,
    Router,
    parse_event,
)
from ringez_worker.handlers.events import InvalidEvent
from ringez_worker.handlers.loading import HandlerLoadError, load_router


async def noop(event: Event, ctx: object) -> None:
    return None


def test_handlers_for_an_event_include_star_handlers_in_order():
    router = Router()
    router.add("call.completed", noop, name="a")
    router.add(ANY, noop, name="b")
    router.add("call.answered", noop, name="c")
    assert [h.name for h in router.handlers_for("call.completed")] == ["a@call.completed", "b"]
    assert [h.name for h in router.handlers_for("something.else")] == ["b"]


def test_one_function_on_several_events_gets_one_name_per_event():
    router = Router()
    router.on("call.completed", "call.failed")(noop)
    names = [h.name for h in router.handlers]
    assert names == [f"{__name__}.noop@call.completed", f"{__name__}.noop@call.failed"]


def test_registering_the_same_name_twice_is_an_error():
    router = Router()
    router.add("call.completed", noop)
    with pytest.raises(ValueError, match="registered twice"):
        router.add("call.completed", noop)


def test_on_needs_an_event():
    with pytest.raises(ValueError):
        Router().on()


def test_known_events_parse_to_their_models_and_unknown_to_event():
    completed = parse_event(
        {
            "event": "call.completed",
            "timestamp": "2026-11-24T12:00:00Z",
            "data": {"call_id": "c", "session_id": "s", "duration": 12, "cost": 0.1, "new": 1},
        }
    )
    assert isinstance(completed, CallCompleted)
    assert completed.data.duration == 12
    assert completed.call_id == "c"
    assert completed.data.new == 1  # extra fields are kept
    custom = parse_event({"event": "x.y", "timestamp": "2026-11-24T12:00:00Z", "data": {"k": 1}})
    assert type(custom) is Event
    assert custom.call_id is None


def test_a_known_event_with_wrong_data_is_invalid():
    with pytest.raises(InvalidEvent, match="call_id"):
        parse_event({"event": "call.completed", "timestamp": "2026-11-24T12:00:00Z", "data": {}})


def test_load_router_from_a_module_path():
    router = load_router(["tests.sample_handlers"], use_entry_points=False)
    assert [h.name for h in router.handlers] == [
        "tests.sample_handlers.log_completed_call@call.completed"
    ]


def test_load_router_reports_a_missing_module():
    with pytest.raises(HandlerLoadError, match="no_such_module"):
        load_router(["no_such_module"], use_entry_points=False)


def test_load_router_from_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "acme_handlers.py").write_text(
        textwrap.dedent(
            """
            from ringez_worker.handlers import Router
            router = Router()

            @router.on("call.answered")
            async def greet(event, ctx):
                pass

            def register(r):
                r.add("call.failed", greet, name="acme.failed")
            """
        )
    )
    dist = tmp_path / "acme_handlers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-handlers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[ringez_worker.handlers]\nacme = acme_handlers\nacme_fn = acme_handlers:register\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        router = load_router([], use_entry_points=True)
    finally:
        sys.modules.pop("acme_handlers", None)
    assert sorted(h.name for h in router.handlers) == [
        "acme.failed@call.failed",
        "acme_handlers.greet@call.answered",
    ]


def test_a_context_without_an_api_client_says_which_setting_is_missing():
    ctx = Context(delivery_id="d", redis=None, settings=None, log=None)  # type: ignore[arg-type]
    assert not ctx.has_ringez
    with pytest.raises(RingezNotConfigured, match="RINGEZ_API_KEY") as caught:
        _ = ctx.ringez
    assert caught.value.retryable is False  # the dispatcher sends it straight to the record


async def test_startup_hooks_run_once_per_worker_start_and_a_failing_one_is_only_logged(
    redis_url, redis_client
):
    import structlog

    from ringez_worker.jobs import schedule_task
    from ringez_worker.keys import Keys
    from tests.conftest import make_settings, running_worker, wait_for

    started: list[str] = []
    inner = Router()

    @inner.on_startup
    async def note(redis, settings) -> None:
        await redis.rpush("test:started", settings.queue_name)
        started.append("note")

    @inner.on_startup
    async def broken(redis, settings) -> None:
        raise RuntimeError("a start-up chore failed")

    @inner.on_task("test.after_start")
    async def handled(event, ctx) -> None:
        await ctx.redis.rpush("test:handled", "1")

    outer = Router()
    outer.include(inner)
    outer.include(inner)  # included twice: each hook still once
    assert outer.startup_hooks == [note, broken]
    settings = make_settings(redis_url)
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings, outer):
            await wait_for(lambda: redis_client.llen("test:started"), 10, what="the hook ran")
            keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
            assert await schedule_task(redis_client, keys, "test.after_start", {})
            await wait_for(lambda: redis_client.llen("test:handled"), 10, what="a job handled")
    assert started == ["note"]
    failed = [e for e in logs if e["event"] == "worker.startup_hook_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError", failed
