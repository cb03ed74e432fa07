"""`ringez-worker`: serve webhooks, run the worker, send a signed test event."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from handlers.loading import HandlerLoadError
from worker.logs import configure_logging, get_logger
from worker.settings import Settings, SettingsError, load_settings, require

log = get_logger("ringez.cli")


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _setup(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from worker.receiver import create_app

    require(settings, "ringez_webhook_secret")
    _setup(settings)
    _use_uvloop()
    port = args.port or settings.port
    log.info("receiver.starting", host=settings.host, port=port, path=settings.webhook_path)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.shutdown_grace_seconds,
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from worker.app import create_worker

    _setup(settings)
    _use_uvloop()
    delay = 1.0
    while True:
        asyncio.set_event_loop(asyncio.new_event_loop())
        worker = create_worker(settings)
        started = time.monotonic()
        try:
            worker.run()
            return 0
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # arq exits when Redis goes away; a worker that restarts itself keeps draining.
            delay = 1.0 if time.monotonic() - started > 30 else min(delay * 2, 30.0)
            log.warning("worker.redis_lost", error=type(exc).__name__, restart_in_s=delay)
            time.sleep(delay)
        except KeyboardInterrupt:
            return 0


def build_event(event: str, data: dict, timestamp: str | None = None) -> bytes:
    """A webhook body shaped as Ringez sends it."""
    stamp = timestamp or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps({"event": event, "timestamp": stamp, "data": data})


async def post_webhook(url: str, body: bytes, secret: bytes) -> tuple[int, bytes]:
    """POST `body` signed with `secret`; return the status and the response body."""
    import aiohttp

    from worker import signature

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringez-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the webhook receiver (the `web` process)")
    serve.add_argument("--port", type=int, default=None, help="override PORT")
    serve.set_defaults(run=cmd_serve)

    work = sub.add_parser("worker", help="run the arq worker (the `worker` process)")
    work.set_defaults(run=cmd_worker)

    send = sub.add_parser("send", help="POST a correctly signed webhook, for trying things out")
    send.add_argument("event", help="event name, e.g. call.completed")
    send.add_argument("--data", default="{}", help="the event's data as a JSON object")
    send.add_argument("--url", default=None, help="receiver URL (default: this machine's PORT)")
    send.set_defaults(run=cmd_send)
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
