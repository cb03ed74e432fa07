"""`ringez-worker`: serve webhooks, run the worker, send a signed test event."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from ringez_worker.handlers.loading import HandlerLoadError
from ringez_worker.logs import configure_logging, get_logger
from ringez_worker.settings import Settings, SettingsError, load_settings, require
from ringez_worker.tracing import setup_from_env

log = get_logger("ringez.cli")


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _secrets(settings: Settings) -> list[str]:
    from ringez_worker.agents.config import AgentSettings

    try:
        agent_secrets = AgentSettings().secret_values()
    except Exception:  # bad agent settings are reported when the worker builds its agents
        agent_secrets = []
    return settings.secret_values() + agent_secrets


def _setup(settings: Settings, fmt: str | None = None) -> None:
    # Tracing first: the log processors that add trace ids are chosen by configure_logging.
    setup_from_env()
    configure_logging(
        settings.log_level,
        fmt or settings.log_format,
        _secrets(settings),
        phone_numbers=settings.log_phone_numbers,
    )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.worker.receiver import create_app
    from ringez_worker.worker.serve import run_receiver

    require(settings, "ringez_webhook_secret")
    _setup(settings)
    _use_uvloop()
    port = args.port or settings.port
    log.info("receiver.starting", host=settings.host, port=port, path=settings.webhook_path)
    run_receiver(create_app(settings), settings, settings.host, port)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.worker.restart import run_restarting

    _setup(settings)
    _use_uvloop()
    try:
        return asyncio.run(run_restarting(settings))
    except KeyboardInterrupt:
        return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    import types

    from ringez_worker.agents.campaign import api as campaigns
    from ringez_worker.sandbox.dev import DEFAULT_SCENARIOS, run_dev
    from ringez_worker.worker.app import create_worker
    from ringez_worker.worker.console import create_console_app
    from ringez_worker.worker.receiver import create_app
    from ringez_worker.worker.serve import listen, start_receiver

    _setup(settings, "console" if settings.log_format == "auto" else settings.log_format)
    _use_uvloop()
    scenarios = tuple(s for s in (args.scenarios or ",".join(DEFAULT_SCENARIOS)).split(",") if s)
    return asyncio.run(
        run_dev(
            settings,
            types.SimpleNamespace(
                create_app=create_app,
                start_receiver=lambda app, settings, port: start_receiver(
                    app, listen("127.0.0.1", port), settings
                ),
                create_worker=create_worker,
                create_console=create_console_app,
                campaigns=campaigns,
            ),
            scenarios=scenarios,
            sandbox_port=args.sandbox_port,
            exit_after_scenarios=args.exit_after_scenarios,
        )
    )


def cmd_console(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.worker.console.serve import run_console

    _setup(settings)
    return run_console(settings, args.host, args.port, _secrets(settings))


def cmd_sandbox(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.sandbox import config_from_settings, run_sandbox

    _setup(settings)
    config = config_from_settings(settings)
    if args.receiver_url:
        config.receiver_url = args.receiver_url
    try:
        asyncio.run(run_sandbox(config, args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


def build_event(event: str, data: dict, timestamp: str | None = None) -> bytes:
    """A webhook body shaped as Ringez sends it."""
    stamp = timestamp or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps({"event": event, "timestamp": stamp, "data": data})


async def post_webhook(url: str, body: bytes, secret: bytes) -> tuple[int, bytes]:
    """POST `body` signed with `secret`; return the status and the response body."""
    import aiohttp

    from ringez_worker import signature

    headers = {"Content-Type": "application/json", signature.HEADER: signature.sign(body, secret)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    require(settings, "ringez_webhook_secret")
    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError as exc:
        print(f"--data is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(data, dict):
        print("--data must be a JSON object", file=sys.stderr)
        return 2
    data.setdefault("call_id", f"call_{int(time.time() * 1000)}")
    data.setdefault("session_id", "sess_cli")
    url = args.url or f"http://127.0.0.1:{settings.port}{settings.webhook_path}"
    body = build_event(args.event, data)
    status, response = asyncio.run(post_webhook(url, body, settings.webhook_secrets[0]))
    print(f"{status} {response.decode(errors='replace')}")
    return 0 if 200 <= status < 300 else 1


def _ms(value: int | None) -> str:
    if not value:
        return "-"
    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _failed(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.keys import Keys
    from ringez_worker.redis_conn import redis_from_settings

    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    redis = redis_from_settings(settings)
    try:
        if args.action == "list":
            return await _failed_list(redis, keys)
        if args.action == "show":
            return await _failed_show(redis, keys, args.id)
        if args.action == "replay":
            ttl_ms = settings.handler_state_ttl_seconds * 1000
            return await _failed_replay(redis, keys, args, ttl_ms)
        if args.action == "purge":
            return await _failed_purge(redis, keys, args)
    finally:
        await redis.aclose()
    return 2


def _report_bad(bad: Sequence[Exception]) -> None:
    # One line each, on stderr: a corrupted record must not hide the good ones.
    for record in bad:
        print(f"skipped {record}", file=sys.stderr)


async def _failed_list(redis, keys) -> int:
    from ringez_worker.worker import failed

    records, bad = await failed.scan_failed(redis, keys)
    _report_bad(bad)
    if not records:
        print("no failed events" if not bad else "no readable failed events")
        return 1 if bad else 0
    print(f"{'DELIVERY':<16} {'EVENT':<24} {'TRIES':>5}  {'LAST FAILED (UTC)':<19}  HANDLERS")
    for r in records:
        names = ", ".join(sorted(r["handlers"]))
        event = r.get("event") if isinstance(r.get("event"), str) else "-"
        print(
            f"{r['delivery_id'][:16]:<16} {event:<24} {r.get('attempts', '-'):>5}  "
            f"{_ms(r.get('last_failed_ms')):<19}  {names}"
        )
    return 1 if bad else 0


async def _failed_show(redis, keys, delivery_id: str) -> int:
    from ringez_worker.worker import failed

    try:
        record = await failed.get_failed(redis, keys, delivery_id)
    except failed.BadRecord as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if record is None:
        print(f"no failed event {delivery_id}", file=sys.stderr)
        return 1
    print(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())
    return 0


async def _failed_replay(redis, keys, args: argparse.Namespace, ttl_ms: int) -> int:
    from ringez_worker.worker import failed

    bad: list[failed.BadRecord] = []
    if args.all:
        records, bad = await failed.scan_failed(redis, keys)
        ids = [r["delivery_id"] for r in records]
        _report_bad(bad)
    else:
        ids = [args.id] if args.id else []
    if not ids and not bad:
        print("name a delivery id or --all", file=sys.stderr)
        return 2
    problems = len(bad)
    for delivery in ids:
        try:
            job = await failed.replay(redis, keys, delivery, ttl_ms)
        except failed.BadRecord as exc:
            print(f"cannot replay: {exc}", file=sys.stderr)
            problems += 1
            continue
        problems += job is None
        print(f"replayed {delivery[:16]} as job {job}" if job else f"no failed {delivery}")
    return 1 if problems else 0


async def _failed_purge(redis, keys, args: argparse.Namespace) -> int:
    from ringez_worker.worker import failed

    if not args.all and not args.id:
        print("name a delivery id or --all", file=sys.stderr)
        return 2
    count = await failed.purge(redis, keys, None if args.all else args.id)
    print(f"purged {count}")
    return 0


async def _status(settings: Settings) -> int:
    from ringez_worker.keys import Keys
    from ringez_worker.redis_conn import redis_from_settings
    from ringez_worker.worker.metrics import presence_stale, queue_stats, worker_presence

    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    redis = redis_from_settings(settings)
    try:
        stats = await queue_stats(redis, keys)
        workers = await worker_presence(redis, keys)
    finally:
        await redis.aclose()
    now_ms = time.time() * 1000
    live = [w for w in workers if not presence_stale(w, now_ms)]
    stale = [w for w in workers if presence_stale(w, now_ms)]
    newest = max((now_ms - w["at_ms"] for w in live), default=0.0) / 1000
    alive = str(len(live)) + (f" ({len(stale)} stale, not counted)" if stale else "")
    rows = [
        ("queue", settings.queue_name),
        ("queued jobs", str(stats["depth"])),
        ("oldest due job", f"{stats['oldest_age_s']:.1f} s"),
        ("workers alive", alive),
        (
            "jobs running",
            f"{sum(w['running'] for w in live)} (as reported {newest:.1f} s ago at most)",
        ),
        ("failed events", str(stats["failed"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for w in sorted(workers, key=lambda w: (w["host"], w["pid"])):
        seen = (now_ms - w["at_ms"]) / 1000
        state = "STALE, killed or stuck? " if presence_stale(w, now_ms) else ""
        print(
            f"  worker {w['host']}:{w['pid']}  {state}seen {seen:.1f} s ago  "
            f"running={w['running']} complete={w['complete']} failed={w['failed']} "
            f"retried={w['retried']}"
        )
    return 0


def _against_redis(coro: Any) -> int:
    """Run a command that needs Redis; Redis away is one line and exit 2, not a traceback."""
    from redis.exceptions import RedisError

    try:
        return asyncio.run(coro)
    except (RedisError, OSError) as exc:
        # The type only: redis-py's message names the host and port from REDIS_URL.
        print(
            f"ringez-worker: REDIS_URL: Redis is unreachable ({type(exc).__name__})",
            file=sys.stderr,
        )
        return 2


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    return _against_redis(_status(settings))


def cmd_failed(settings: Settings, args: argparse.Namespace) -> int:
    return _against_redis(_failed(settings, args))


async def _erase(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.erasure import Subject
    from ringez_worker.keys import Keys
    from ringez_worker.redis_conn import redis_from_settings
    from ringez_worker.worker.erase import erase

    subject = Subject(
        calls=set(args.call or ()), sessions=set(args.session or ()), phones=set(args.phone or ())
    )
    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    redis = redis_from_settings(settings)
    try:
        removed = await erase(redis, keys, subject)
    finally:
        await redis.aclose()
    width = max(len(name) for name in removed)
    for name, count in removed.items():
        print(f"{name:<{width}}  {count}")
    print(f"{'total':<{width}}  {sum(removed.values())}")
    if subject.calls_with_phone - subject.calls:
        # The number's records are gone; the calls' other data (summaries, agent state)
        # is the caller's too, and erased by call id.
        others = " ".join(f"--call {c}" for c in sorted(subject.calls_with_phone))
        print(f"calls that had this number: ringez-worker erase {others}", file=sys.stderr)
    return 0


def cmd_erase(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.agents.phone import is_e164

    if not (args.call or args.session or args.phone):
        print("name at least one --call, --session or --phone", file=sys.stderr)
        return 2
    bad = [p for p in args.phone or () if not is_e164(p)]
    if bad:
        print("--phone must be an E.164 number such as +14155550100", file=sys.stderr)
        return 2
    return _against_redis(_erase(settings, args))


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.report.command import main as report_main

    return report_main(settings, args.date, args.session, args.out, latest=args.latest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringez-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the webhook receiver (the `web` process)")
    serve.add_argument("--port", type=int, default=None, help="override PORT")
    serve.set_defaults(run=cmd_serve)

    dev = sub.add_parser(
        "dev", help="run everything locally: embedded Redis, sandbox, receiver, worker, agents"
    )
    dev.add_argument("--scenarios", default=None, help="comma-separated scenario names")
    dev.add_argument("--sandbox-port", type=int, default=0, help="default: a free port")
    dev.add_argument(
        "--exit-after-scenarios", action="store_true", help="stop once the scenarios are done"
    )
    dev.set_defaults(run=cmd_dev)

    sandbox = sub.add_parser("sandbox", help="run the local Ringez API sandbox alone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8080)
    sandbox.add_argument("--receiver-url", default=None, help="where its webhooks go")
    sandbox.set_defaults(run=cmd_sandbox)

    console = sub.add_parser("console", help="the web console (deliveries, calls, failed events)")
    console.add_argument("--host", default=None, help="override CONSOLE_HOST (127.0.0.1)")
    console.add_argument("--port", type=int, default=None, help="override CONSOLE_PORT (8300)")
    console.set_defaults(run=cmd_console)

    work = sub.add_parser("worker", help="run the arq worker (the `worker` process)")
    work.set_defaults(run=cmd_worker)

    send = sub.add_parser("send", help="POST a correctly signed webhook, for trying things out")
    send.add_argument("event", help="event name, e.g. call.completed")
    send.add_argument("--data", default="{}", help="the event's data as a JSON object")
    send.add_argument("--url", default=None, help="receiver URL (default: this machine's PORT)")
    send.set_defaults(run=cmd_send)

    status = sub.add_parser("status", help="queue depth, oldest event, workers, failed events")
    status.set_defaults(run=cmd_status)

    report = sub.add_parser("report", help="the daily report: an HTML page and a PNG per chart")
    report.add_argument(
        "--date", default=None, help="YYYY-MM-DD in REPORT_TIMEZONE (default: today)"
    )
    report.add_argument("--session", default=None, help="only this session's calls")
    report.add_argument("--out", default=".", help="directory for the files (default: here)")
    report.add_argument("--latest", action="store_true", help="the newest report kept in Redis")
    report.set_defaults(run=cmd_report)

    erase = sub.add_parser(
        "erase", help="remove a call's, a session's or a phone number's data everywhere"
    )
    erase.add_argument("--call", action="append", help="a call id (repeat for more)")
    erase.add_argument("--session", action="append", help="a session id: it and its calls")
    erase.add_argument("--phone", action="append", help="an E.164 number: records holding it")
    erase.set_defaults(run=cmd_erase)

    failed = sub.add_parser("failed", help="inspect and replay the failed-events record")
    actions = failed.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="one line per failed delivery")
    show = actions.add_parser("show", help="one record, with its body")
    show.add_argument("id", help="delivery id (a unique prefix is enough)")
    for name, text in (("replay", "queue again, only the failed handlers"), ("purge", "delete")):
        action = actions.add_parser(name, help=text)
        action.add_argument("id", nargs="?", help="delivery id (a unique prefix is enough)")
        action.add_argument("--all", action="store_true", help="every record")
    failed.set_defaults(run=cmd_failed)
    from ringez_worker.worker import callbacks_cli, campaign_cli

    callbacks_cli.register(sub)
    campaign_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        return args.run(settings, args)
    except (SettingsError, HandlerLoadError) as exc:
        print(f"ringez-worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
