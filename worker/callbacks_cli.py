"""`ringez-worker callbacks ...`: add, list, show and cancel requests; load and list the
roster (the callback queue, agents/callbacks/)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson
from pydantic import ValidationError

from ringez_worker.settings import Settings


def register(sub: Any) -> None:
    """Add the `callbacks` command to the CLI's subparsers."""
    cb = sub.add_parser("callbacks", help="the callback queue: requests and the agent roster")
    actions = cb.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="queue a callback request")
    add.add_argument("--customer", required=True, help="customer id")
    add.add_argument("--phone", required=True, help="the number to call back (E.164)")
    add.add_argument("--urgency", default="normal", choices=("low", "normal", "high"))
    add.add_argument("--skill", default="general")
    add.add_argument("--language", default="en")
    add.add_argument("--metadata", default="{}", help='JSON, e.g. \'{"tier": "vip"}\'')
    add.add_argument("--idempotency-key", default=None)
    actions.add_parser("list", help="waiting requests, in priority order, with their wait")
    show = actions.add_parser("show", help="one request, whole")
    show.add_argument("id")
    cancel = actions.add_parser("cancel", help="cancel a waiting request")
    cancel.add_argument("id")
    actions.add_parser("agents", help="the roster with each agent's live load")
    roster = actions.add_parser("roster", help="load a roster file into Redis")
    roster.add_argument("verb", choices=("load",))
    roster.add_argument("file")
    cb.set_defaults(run=cmd_callbacks)


def cmd_callbacks(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_run(settings, args))


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.agents import callbacks
    from ringez_worker.agents.callbacks.models import field_errors
    from ringez_worker.agents.callbacks.roster import RosterError
    from ringez_worker.keys import Keys
    from ringez_worker.redis_conn import redis_from_settings

    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    redis = redis_from_settings(settings)
    try:
        if args.action == "add":
            try:
                metadata = orjson.loads(args.metadata)
                added = await callbacks.add_callback(
                    redis,
                    keys,
                    {
                        "customer_id": args.customer,
                        "phone": args.phone,
                        "urgency": args.urgency,
                        "skill": args.skill,
                        "language": args.language,
                        "metadata": metadata,
                    },
                    idempotency_key=args.idempotency_key,
                )
            except orjson.JSONDecodeError:
                return _fail("--metadata is not JSON")
            except ValidationError as exc:
                problems = "; ".join(f"{k}: {v}" for k, v in field_errors(exc).items())
                return _fail(problems)
            if added.status == "conflict":
                return _fail(f"--idempotency-key was used for another request ({added.request_id})")
            print(added.request_id)
            return 0
        if args.action == "list":
            now = time.time() * 1000
            for r in await callbacks.list_waiting(redis, keys):
                waited = (now - int(r.get("created_ms", now))) / 1000
                print(
                    f"{r['id']}  {r.get('state', '?'):8} priority={r.get('priority', '-'):>3} "
                    f"waited={waited:7.1f}s skill={r.get('skill')} language={r.get('language')}"
                    f" tries={r.get('tries', 0)}"
                )
            return 0
        if args.action == "show":
            record = await callbacks.show(redis, keys, args.id)
            if record is None:
                return _fail(f"no callback request {args.id}")
            print(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())
            return 0
        if args.action == "cancel":
            before = await callbacks.cancel(redis, keys, args.id)
            if before in ("new", "queued", "retry"):
                print(f"cancelled {args.id} (was {before})")
                return 0
            return _fail(
                f"{args.id} is {before or 'unknown'}: only a waiting request can be cancelled"
            )
        if args.action == "agents":
            for a in await callbacks.agents_with_load(redis, keys):
                state = "available" if a.get("available") else "away"
                print(
                    f"{a['id']:16} {a['number']:16} load={a['load']}/{a['max_concurrent']} "
                    f"{state:9} skills={','.join(a['skills'])} languages={','.join(a['languages'])}"
                )
            return 0
        if args.action == "roster":
            try:
                count, changed = await callbacks.load_roster_file(redis, keys, args.file)
            except RosterError as exc:
                return _fail(str(exc))
            print(f"{count} agents {'loaded' if changed else 'unchanged (same version)'}")
            return 0
    finally:
        await redis.aclose()
    return 2


def _fail(message: str) -> int:
    print(f"ringez-worker callbacks: {message}", file=sys.stderr)
    return 2
