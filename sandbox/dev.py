"""`ringez-worker dev`: the whole service on one machine, with nothing to set up.

Starts an embedded Redis (unless REDIS_URL is set), the local Ringez sandbox, the
receiver and a worker with the built-in agents in one process, plays the call
scenarios through them, prints what happened, and stays up for more events.

The receiver and the worker come in as factories from the CLI, which composes `dev`:
the sandbox sits beside the runtime, never under it or above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web

from ringez_worker.logs import get_logger
from ringez_worker.redis_conn import redis_from_settings
from ringez_worker.redis_url import url_password
from ringez_worker.sandbox import (
    REQUEST_LOG,
    config_from_settings,
    dev_callbacks,
    dev_campaign,
    start_sandbox,
    start_scenario,
)
from ringez_worker.sandbox.dev_quality import quality_lines
from ringez_worker.sandbox.redis_server import start_embedded
from ringez_worker.settings import Settings
from ringez_worker.tracing import TRACING

DEV_SECRET = "whsec_dev_local"
DEV_API_KEY = "sk_test_dev_local"
DEFAULT_SCENARIOS = ("calm", "angry", "busy", "low_balance")

log = get_logger("ringez.dev")


class Worker(Protocol):
    async def main(self) -> None: ...
    async def close(self) -> None: ...


class Runtime(Protocol):
    """What `dev` runs: the CLI passes the real receiver and worker factories."""

    create_app: Callable[[Settings], web.Application]
    # Serves the receiver app as `ringez-worker serve` does (the socket lane); the runner
    # it answers stops it. Without it, dev serves the app on aiohttp's own site.
    start_receiver: Callable[[web.Application, Settings, int], Awaitable[web.AppRunner]] | None
    create_worker: Callable[..., Worker]
    # The web console, when the CLI passes it (`dev` makes its token).
    create_console: Callable[[Settings], web.Application] | None
    # The campaigns' Python API (agents/campaign/api.py) for the `campaign` scenario.
    campaigns: Any


def _say(text: str = "") -> None:
    print(text, flush=True)


async def run_dev(
    settings: Settings,
    runtime: Runtime,
    *,
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS,
    sandbox_port: int = 0,
    exit_after_scenarios: bool = False,
) -> int:
    """Run everything until SIGINT/SIGTERM (or, with `exit_after_scenarios`, until they end)."""
    embedded = None
    if "redis_url" not in settings.model_fields_set:
        embedded = await asyncio.to_thread(start_embedded)
        redis_label = embedded.label
        settings = settings.model_copy(update={"redis_url": embedded.url})
    else:
        redis_label = "REDIS_URL"
    updates: dict[str, Any] = {}
    if not settings.webhook_secrets:
        updates["ringez_webhook_secret"] = _secret(DEV_SECRET)
    if settings.ringez_api_key is None:
        updates["ringez_api_key"] = _secret(DEV_API_KEY)
    if "ringez_rate_limit" not in settings.model_fields_set:
        updates["ringez_rate_limit"] = 100_000  # the local sandbox has no tier to protect
    settings = settings.model_copy(update=updates)

    sandbox = await start_sandbox(
        config_from_settings(settings, pacing_seconds=0.2, escalation_wait_seconds=10),
        port=sandbox_port,
    )
    settings = settings.model_copy(update={"ringez_api_url": sandbox.api_url})
    if "poor_quality" in scenarios:
        # The scenario shows the quality monitor, which is opt-in: on for this run.
        dev_callbacks.enable_agent("quality")
    callbacks_token = None
    made_files: list[str] = []
    if dev_callbacks.NAME in scenarios:
        # Before the worker is made: it reads the callback agent's settings from the env.
        callbacks_token, roster_file = dev_callbacks.prepare(sandbox.sandbox)
        made_files.append(roster_file)
        settings = settings.model_copy(update={"callbacks_token": _secret(callbacks_token)})
        scenarios = tuple(s for s in scenarios if s != dev_callbacks.NAME)
    campaign = dev_campaign.NAME in scenarios and getattr(runtime, "campaigns", None) is not None
    if campaign:
        dev_campaign.prepare()  # before the worker is made, as for callbacks
        scenarios = tuple(s for s in scenarios if s != dev_campaign.NAME)

    start = getattr(runtime, "start_receiver", None)
    if start is not None:
        runner = await start(runtime.create_app(settings), settings, settings.port)
    else:
        runner = web.AppRunner(runtime.create_app(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    receiver_url = f"http://127.0.0.1:{settings.port}{settings.webhook_path}"

    worker = runtime.create_worker(settings, handle_signals=False)
    worker_task = asyncio.create_task(worker.main())
    console_runner, console_url, console_token = await _start_console(settings, runtime)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    secret = settings.webhook_secrets[0].decode()
    _say()
    _say("ringez-agent-worker dev")
    _say(f"  redis     {redis_label}  {settings.redis_url}")
    _say(f"  receiver  {receiver_url}")
    _say(f"  sandbox   {sandbox.api_url}  (a local Ringez API)")
    _say(f"  metrics   http://127.0.0.1:{settings.port}/metrics")
    if console_runner is not None:
        _say(f"  console   {console_url}/login  (token {console_token})")
    if TRACING.on:
        exporters = os.environ.get("OTEL_TRACES_EXPORTER") or "otlp"
        _say(f"  tracing   on, exporter {exporters} (README: Tracing)")
    _say()
    try:
        runs = [start_scenario(sandbox.sandbox, name, receiver_url) for name in scenarios]
        queue: asyncio.Task[list[str]] | None = None
        if callbacks_token is not None:
            redis = redis_from_settings(settings)
            base = f"http://127.0.0.1:{settings.port}"
            queue = asyncio.create_task(
                dev_callbacks.play(base, callbacks_token, redis, settings.key_prefix)
            )
            queue.add_done_callback(lambda _: asyncio.ensure_future(redis.aclose()))
        calling: asyncio.Task[list[str]] | None = None
        if campaign:
            campaign_redis = redis_from_settings(settings)
            calling = asyncio.create_task(
                dev_campaign.play(runtime.campaigns, campaign_redis, settings.key_prefix)
            )
            calling.add_done_callback(lambda _: asyncio.ensure_future(campaign_redis.aclose()))
        names = [
            *scenarios,
            *([dev_callbacks.NAME] if queue is not None else []),
            *([dev_campaign.NAME] if calling is not None else []),
        ]
        _say(f"playing scenarios: {', '.join(names)}")
        extra = [t for t in (queue, calling) if t is not None]
        played = asyncio.gather(*(r.task for r in runs), *extra, return_exceptions=True)
        stopped = asyncio.ensure_future(stop.wait())
        waited: list[asyncio.Future[Any]] = [played, stopped, worker_task]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED, timeout=120)
        if worker_task.done():
            worker_task.result()  # the worker died: say why
        await _wait_drained(settings)
        await _report(settings, sandbox, runs)
        for task in extra:
            if task.done() and not task.cancelled():
                for line in task.result() if task.exception() is None else [repr(task.exception())]:
                    _say(line)
        if not exit_after_scenarios:
            _say()
            _say("still running; send more from another terminal:")
            _say(
                f"  RINGEZ_WEBHOOK_SECRET={secret if secret == DEV_SECRET else '<your secret>'} "
                f"ringez-worker send call.completed --url {receiver_url} "
                """--data '{"duration": 30}'"""
            )
            _say("Ctrl-C stops everything.")
            await stop.wait()
    finally:
        _say("stopping ...")
        worker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker_task
        await worker.close()
        await runner.cleanup()
        if console_runner is not None:
            await console_runner.cleanup()
        await sandbox.close()
        for path in made_files:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if embedded is not None:
            await asyncio.to_thread(embedded.cleanup)
    return 0


async def _start_console(
    settings: Settings, runtime: Runtime
) -> tuple[web.AppRunner | None, str, str]:
    """The console on loopback with a fresh token (unless CONSOLE_TOKEN is set): on
    CONSOLE_PORT, or a free port when that one is taken."""
    factory = getattr(runtime, "create_console", None)
    if factory is None:
        return None, "", ""
    import secrets

    if settings.console_token is None:
        settings = settings.model_copy(update={"console_token": _secret(secrets.token_urlsafe(24))})
    runner = web.AppRunner(factory(settings), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", settings.console_port).start()
    except OSError:  # taken (another dev, a console already running): any free port
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    bound = runner.addresses[0][1]
    url = f"http://127.0.0.1:{bound}{settings.console_base_path}"
    token = settings.console_token.get_secret_value() if settings.console_token else ""
    return runner, url, token


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


async def _wait_drained(settings: Settings, deadline_s: float = 20.0) -> None:
    """Until the queue is empty (every delivered event handled), or the deadline."""
    redis = redis_from_settings(settings)
    try:
        for _ in range(int(deadline_s / 0.05)):
            if not await redis.zcard(settings.queue_name):
                return
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def _report(settings: Settings, sandbox: Any, runs: list[Any]) -> None:
    requests = sandbox.app[REQUEST_LOG]
    redis = redis_from_settings(settings)
    try:
        _say()
        _say("what happened")
        for run in runs:
            names = [
                e.event for e in sandbox.sandbox.events if e.data.get("call_id") == run.call_id
            ]
            transfers = [
                r
                for r in requests
                if r["path"].endswith(f"/calls/{run.call_id}/actions")
                and (r.get("json") or {}).get("action") == "transfer"
            ]
            charges = [
                r
                for r in requests
                if r["path"].endswith("/wallet/add-credits")
                and (r.get("json") or {}).get("session_id") == run.session_id
                and r.get("status", 200) < 300
            ]
            raw = await redis.get(f"{settings.key_prefix}:summary:{run.call_id}")
            summary = orjson.loads(raw) if raw else {}
            _say(f"  {run.name}: call {run.call_id}")
            _say(f"    events    {' -> '.join(names) or '-'}")
            if summary:
                _say(
                    f"    support   intents={summary.get('intents')} "
                    f"sentiment={summary.get('sentiment')} outcome={summary.get('outcome')}"
                    + (" (quality record merged)" if "quality" in summary else "")
                )
            for t in transfers:
                to = (t.get("json") or {}).get("parameters", {}).get("transfer_to")
                _say(f"    escalation transferred to {to} (status {t.get('status')})")
            for line in await quality_lines(redis, settings.key_prefix, run.call_id, requests):
                _say(line)
            for c in charges:
                body = c.get("json") or {}
                _say(
                    f"    recharge  charged {body.get('amount')} {body.get('currency')} "
                    f"(plan {body.get('plan')}, key {body.get('idempotency_key')})"
                )
        failed = await redis.hlen(f"{settings.key_prefix}:failed")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        _say(f"  failed events: {failed}")
        key = settings.ringez_api_key.get_secret_value() if settings.ringez_api_key else ""
        day = datetime.now(UTC).date().isoformat()
        # Only the dev's own key and a password-less Redis URL are printed as they are.
        redis_url = "<your REDIS_URL>" if url_password(settings.redis_url) else settings.redis_url
        _say(
            f"  report: while this runs, REDIS_URL={redis_url} "
            f"RINGEZ_API_URL={settings.ringez_api_url} "
            f"RINGEZ_API_KEY={key if key == DEV_API_KEY else '<your key>'} "
            f"ringez-worker report --date {day} --out ringez-report"
        )
        if runs:
            # What a caller's request to be forgotten takes (README, "Privacy").
            _say(
                f"  erase: REDIS_URL={redis_url} ringez-worker erase --call {runs[0].call_id}"
                f"  (or --session {runs[0].session_id})"
            )
    finally:
        await redis.aclose()
