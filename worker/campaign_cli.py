"""`ringez-worker campaign ...`: create a campaign from a contacts CSV, start, pause,
resume and cancel it, list campaigns, watch one's status, export its results
(agents/campaign/). Only Redis is needed here; the workers place the calls."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from ringez_worker.settings import Settings

NAME = "ringez-worker campaign"


def register(sub: Any) -> None:
    """Add the `campaign` command to the CLI's subparsers."""
    cmd = sub.add_parser("campaign", help="outbound campaigns: call a contact list")
    actions = cmd.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a campaign from a contacts CSV (a draft)")
    create.add_argument("--contacts", required=True, help="CSV with a phone column")
    create.add_argument("--message", required=True, help="what the callee hears")
    create.add_argument("--name", default="")
    create.add_argument("--voice", default="en-US-Neural2-A")
    create.add_argument("--budget", type=float, default=100.0, help="the most it may cost")
    create.add_argument("--currency", default="USD", choices=("USD", "INR"))
    create.add_argument("--max-concurrent", type=int, default=10)
    create.add_argument("--calls-per-minute", type=int, default=0, help="0: no limit")
    create.add_argument("--retries", type=int, default=2, help="for busy and no answer")
    create.add_argument("--retry-after", default="30m", help="e.g. 90s, 30m, 2h")
    create.add_argument("--window", default=None, help="HH:MM-HH:MM, contact's local time")
    create.add_argument("--timezone", default="UTC", help="for contacts without one")
    create.add_argument("--ring-timeout", type=int, default=30, help="seconds")
    create.add_argument("--max-duration", type=int, default=120, help="seconds per call")
    create.add_argument("--num-digits", type=int, default=1)
    create.add_argument("--input-timeout", type=int, default=10, help="seconds")
    create.add_argument("--opt-out-digit", default="9", help="'' for none")
    create.add_argument("--from", dest="from_number", default=None, help="caller id (E.164)")
    create.add_argument("--region", default="US", help="for numbers written without +")
    create.add_argument("--dnc", default=None, help="do-not-call file, one number a line")
    for verb, text in (
        ("start", "begin calling"),
        ("pause", "stop new dials now (live calls finish)"),
        ("resume", "dial again"),
        ("cancel", "end it: no more dials"),
    ):
        actions.add_parser(verb, help=text).add_argument("id")
    actions.add_parser("list", help="every campaign, newest last")
    status = actions.add_parser("status", help="counts, spend, ETA (a live bar on a terminal)")
    status.add_argument("id")
    status.add_argument("--once", action="store_true", help="print once, even on a terminal")
    export = actions.add_parser("export", help="one row per contact")
    export.add_argument("id")
    export.add_argument("--format", default="csv", choices=("csv", "json"))
    export.add_argument("--output", default=None, help="a file (default: stdout)")
    cmd.set_defaults(run=cmd_campaign)


def cmd_campaign(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(settings, args))
    except KeyboardInterrupt:
        return 0


def _is_file(path: str) -> bool:
    return Path(path).is_file()


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


def _fail(message: str) -> int:
    print(f"{NAME}: {message}", file=sys.stderr)
    return 2


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from ringez_worker.agents.campaign import api
    from ringez_worker.keys import Keys
    from ringez_worker.redis_conn import redis_from_settings

    keys = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    redis = redis_from_settings(settings)
    try:
        if args.action == "create":
            return await _create(redis, keys, args)
        if args.action in ("start", "pause", "resume", "cancel"):
            try:
                await getattr(api, args.action)(redis, keys, args.id)
            except api.CampaignError as exc:
                return _fail(str(exc))
            print(f"{args.action} {args.id}: done")
            return 0
        if args.action == "list":
            for c in await api.list_campaigns(redis, keys):
                print(
                    f"{c['id']}  {c.get('state', '?'):9} contacts={c.get('total', 0):>5} "
                    f"spent={float(c.get('spent', 0)):.2f}/{float(c.get('budget', 0)):.2f} "
                    f"{c.get('currency', '')} {c.get('name', '')}".rstrip()
                )
            return 0
        if args.action == "status":
            return await _status(redis, keys, args)
        if args.action == "export":
            try:
                rows = await api.export(redis, keys, args.id)
            except api.CampaignError as exc:
                return _fail(str(exc))
            text = _as_json(rows) if args.format == "json" else _as_csv(rows)
            if args.output:
                _write(args.output, text)
            else:
                sys.stdout.write(text)
            return 0
    finally:
        await redis.aclose()
    return 2


async def _create(redis: Any, keys: Any, args: argparse.Namespace) -> int:
    from ringez_worker.agents.campaign import api
    from ringez_worker.agents.campaign.models import field_errors, parse_duration

    try:
        retry_after = parse_duration(args.retry_after)
    except ValueError as exc:
        return _fail(f"--retry-after: {exc}")
    for flag, path in (("--contacts", args.contacts), ("--dnc", args.dnc)):
        if path is not None and not _is_file(path):
            return _fail(f"{flag} {path}: no such file")
    config = {
        "name": args.name,
        "message": args.message,
        "voice": args.voice,
        "budget": args.budget,
        "currency": args.currency,
        "max_concurrent": args.max_concurrent,
        "calls_per_minute": args.calls_per_minute,
        "retries": args.retries,
        "retry_after_seconds": retry_after,
        "window": args.window,
        "timezone": args.timezone,
        "ring_timeout": args.ring_timeout,
        "max_duration": args.max_duration,
        "num_digits": args.num_digits,
        "input_timeout": args.input_timeout,
        "opt_out_digit": args.opt_out_digit,
        "from_number": args.from_number,
        "region": args.region,
    }
    try:
        created = await api.create_campaign(
            redis, keys, Path(args.contacts), config, dnc=Path(args.dnc) if args.dnc else None
        )
    except ValidationError as exc:
        flags = {"retry_after_seconds": "retry-after", "from_number": "from"}
        return _fail(
            "; ".join(
                f"--{flags.get(k, k).replace('_', '-')}: {v}" for k, v in field_errors(exc).items()
            )
        )
    except api.NoContacts as exc:
        for problem in exc.problems:
            print(f"{NAME}: {args.contacts} {problem}", file=sys.stderr)
        return _fail(f"{args.contacts}: {exc}")
    except UnicodeDecodeError:
        named = " / ".join(p for p in (args.contacts, args.dnc) if p)
        return _fail(f"{named}: not UTF-8 text (save the file as UTF-8 CSV)")
    except ValueError as exc:
        return _fail(f"--contacts {args.contacts}: {exc}")
    for problem in created.problems:
        print(f"{NAME}: {args.contacts} {problem}", file=sys.stderr)
    print(created.campaign_id)
    return 0


def _line(s: dict[str, Any]) -> str:
    counts = " ".join(f"{k}={v}" for k, v in s["counts"].items())
    eta = f" eta={s['eta_seconds']}s" if s["eta_seconds"] is not None else ""
    reason = f" ({s['reason']})" if s["reason"] else ""
    return (
        f"{s['id']} {s['state']}{reason}: {s['finished']}/{s['total']} finished, "
        f"{s['live']} live; spent {s['spent']:.2f} (+{s['reserved']:.2f} reserved) of "
        f"{s['budget']:.2f} {s['currency']}{eta}\n  {counts}"
    )


def _bar(s: dict[str, Any], width: int = 30) -> str:
    done = s["finished"] / s["total"] if s["total"] else 1.0
    filled = int(done * width)
    eta = f" eta {s['eta_seconds']}s" if s["eta_seconds"] is not None else ""
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {s['finished']}/{s['total']} "
        f"{s['live']} live, {s['spent']:.2f}/{s['budget']:.2f} {s['currency']} "
        f"{s['state']}{eta}   "
    )


async def _status(redis: Any, keys: Any, args: argparse.Namespace) -> int:
    from ringez_worker.agents.campaign import api

    try:
        s = await api.status(redis, keys, args.id)
    except api.CampaignError as exc:
        return _fail(str(exc))
    print(_line(s))
    if args.once or not sys.stdout.isatty():
        return 0
    # A terminal: a live bar until the campaign ends (Ctrl-C leaves it running).
    while s["state"] in ("draft", "starting", "opening", "running", "paused"):
        sys.stdout.write(_bar(s))
        sys.stdout.flush()
        await asyncio.sleep(1.0)  # a display refresh, not synchronisation
        s = await api.status(redis, keys, args.id)
    sys.stdout.write(_bar(s) + "\n")
    print(_line(s))
    return 0


def _as_csv(rows: list[dict[str, Any]]) -> str:
    from ringez_worker.agents.campaign.api import EXPORT_FIELDS

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(EXPORT_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                **row,
                "call_ids": " ".join(row["call_ids"]),
                "metadata": orjson.dumps(row["metadata"]).decode() if row["metadata"] else "",
            }
        )
    return out.getvalue()


def _as_json(rows: list[dict[str, Any]]) -> str:
    return orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n"
