"""The console's aiohttp app: server-rendered pages over the delivery log, calls and the
failed-events record. Read-only except replay/purge (worker/failed.py) and erase
(worker/erase.py, the same as `ringez-worker erase`)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
import orjson
from aiohttp import web
from redis.asyncio import Redis

from ringez_worker.agents import campaign as campaigns
from ringez_worker.agents.callbacks import agents_with_load, list_waiting, request_for_call
from ringez_worker.agents.phone import is_e164
from ringez_worker.erasure import Subject
from ringez_worker.keys import Keys
from ringez_worker.logs import REDACTED, Redactor, _is_sensitive, mask_phone_numbers
from ringez_worker.redis_conn import redis_from_settings
from ringez_worker.report.store import latest_report
from ringez_worker.settings import Settings, SettingsError
from ringez_worker.worker import erase, failed
from ringez_worker.worker.console import charts, data
from ringez_worker.worker.console.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Gate,
    middleware,
    safe_next,
)

HERE = Path(__file__).parent
GATE = web.AppKey("gate", Gate)
REDIS = web.AppKey("redis", Redis)
SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", Keys)
REDACT = web.AppKey("redactor", Redactor)
STATUSES = ("handled", "retrying", "failed", "queued", "duplicate", "rejected")


def _when(ms: int | float | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ms: int | float | None) -> str:
    if not ms:
        return "-"
    s = max(0, int(time.time() - ms / 1000))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _redact_keys(value: Any) -> Any:
    """Values under secret-looking keys (payment_token, api_key, ...) are never shown."""
    if isinstance(value, dict):
        return {k: REDACTED if _is_sensitive(str(k)) else _redact_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_keys(v) for v in value]
    return value


def pretty(request: web.Request, body: str | dict | None) -> str:
    """A body for display: pretty-printed, secret keys and known secret values removed."""
    if body is None:
        return ""
    try:
        parsed = orjson.loads(body) if isinstance(body, str) else body
        text = orjson.dumps(_redact_keys(parsed), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        text = str(body)
    return request.app[REDACT].scrub(text)


def _ctx(request: web.Request, page: str, **values: Any) -> dict[str, Any]:
    gate = request.app[GATE]
    return {
        "base": gate.base,
        "csrf": gate.csrf,
        "page": page,
        "when": _when,
        "ago": _ago,
        **values,
    }


def _render(request: web.Request, template: str, page: str, **values: Any) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, _ctx(request, page, **values))


# -- login -----------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    # Reused while it lasts: a second tab (or the browser's favicon request landing here)
    # must not invalidate the form already on screen.
    nonce = request.cookies.get(LOGIN_COOKIE) or gate.login_nonce()
    response = _render(
        request,
        "login.html",
        "login",
        nonce=nonce,
        next=safe_next(gate.base, request.query.get("next")),
        error=request.query.get("error") == "1",
    )
    # Double-submit: the form must echo this cookie, so another site cannot post a login.
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=600, **gate.cookie_args(request))
    return response


async def login_submit(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    form = await request.post()
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    next_url = safe_next(gate.base, str(form.get("next", "")))
    if not nonce or not hmac.compare_digest(nonce, str(form.get("nonce", ""))):
        raise web.HTTPForbidden(text="login form expired; reload it")
    if not gate.token_ok(str(form.get("token", ""))):
        raise web.HTTPSeeOther(f"{gate.base}/login?error=1")
    response = web.HTTPSeeOther(next_url)
    response.set_cookie(
        SESSION_COOKIE, gate.session_value, max_age=12 * 3600, **gate.cookie_args(request)
    )
    response.del_cookie(LOGIN_COOKIE, path=gate.base + "/")
    raise response


async def logout(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    response = web.HTTPSeeOther(f"{gate.base}/login")
    response.del_cookie(SESSION_COOKIE, path=gate.base + "/")
    raise response


# -- overview --------------------------------------------------------------------------


async def _overview(request: web.Request) -> dict[str, Any]:
    return await data.overview(request.app[REDIS], request.app[KEYS], request.app[SETTINGS])


async def overview_page(request: web.Request) -> web.Response:
    return _render(request, "overview.html", "overview", o=await _overview(request))


async def overview_json(request: web.Request) -> web.Response:
    return web.json_response(await _overview(request), dumps=lambda v: orjson.dumps(v).decode())


async def overview_chart(request: web.Request) -> web.Response:
    o = await _overview(request)
    names = (
        ("handled", "retried", "failed")
        if request.query.get("runs")
        else ("accepted", "duplicate", "rejected")
    )
    return web.Response(text=str(charts.bars(o["series"], names)), content_type="image/svg+xml")


# The kept daily report is a self-contained page (its charts as data: PNGs, its own
# <style>): it gets a policy of its own that still runs no script at all.
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


async def latest_report_page(request: web.Request) -> web.Response:
    """The newest report the workers kept (REPORT_CRON), as the workers rendered it."""
    report = await latest_report(request.app[REDIS], request.app[KEYS])
    if report is None:
        return web.Response(
            status=404,
            text="no report kept yet: set REPORT_CRON on the workers, or run "
            "`ringez-worker report --out DIR` for a day",
        )
    response = web.Response(text=report["html"], content_type="text/html")
    response.headers["Content-Security-Policy"] = REPORT_CSP
    return response


# -- deliveries ------------------------------------------------------------------------


async def deliveries_page(request: web.Request) -> web.Response:
    q = {
        k: request.query.get(k, "").strip()
        for k in ("event", "status", "call_id", "session_id", "q")
    }
    deliveries, rows = await data.read_log(request.app[REDIS], request.app[KEYS])
    shown = data.filter_rows(
        rows,
        event=q["event"],
        status=q["status"],
        call_id=q["call_id"],
        session_id=q["session_id"],
        prefix=q["q"],
    )
    events = sorted({d.event for d in deliveries.values() if d.event})
    rejected = None
    if q["status"] in ("", "rejected"):
        rejected = (await _overview(request))["rejected_reasons"]
    return _render(
        request,
        "deliveries.html",
        "deliveries",
        rows=shown[:200],
        total=len(shown),
        q=q,
        events=events,
        statuses=STATUSES,
        rejected=rejected,
    )


async def delivery_page(request: web.Request) -> web.Response:
    wanted = request.match_info["id"].lower()
    deliveries, _ = await data.read_log(request.app[REDIS], request.app[KEYS])
    matches = [d for i, d in deliveries.items() if i.startswith(wanted)]
    if len(matches) != 1:
        raise web.HTTPNotFound(text="no such delivery in the log (it may have aged out)")
    d = matches[0]
    record = await failed.get_failed(request.app[REDIS], request.app[KEYS], d.delivery_id)
    return _render(
        request,
        "delivery.html",
        "deliveries",
        d=d,
        body=pretty(request, d.body),
        failed=record,
        redact=request.app[REDACT].scrub,
    )


# -- calls -----------------------------------------------------------------------------


async def calls_page(request: web.Request) -> web.Response:
    deliveries, _ = await data.read_log(request.app[REDIS], request.app[KEYS])
    wanted = request.query.get("call_id", "").strip()
    if wanted:
        raise web.HTTPSeeOther(f"{request.app[GATE].base}/calls/{quote(wanted, safe='')}")
    return _render(request, "calls.html", "calls", calls=data.calls_index(deliveries)[:200])


def _shown_request(record: dict[str, str]) -> dict[str, str]:
    """A callback request as the pages show it: the customer and the number cut to its
    last four digits read out of the body, the body itself left out."""
    body = orjson.loads(record.get("body") or "{}")
    shown = {k: v for k, v in record.items() if k != "body"}
    shown["customer_id"] = str(body.get("customer_id", ""))
    shown["urgency"] = str(body.get("urgency", ""))
    shown["phone"] = mask_phone_numbers(str(body.get("phone", "")))
    return shown


async def callbacks_page(request: web.Request) -> web.Response:
    """The callback queue: agents with their live load, waiting requests in priority order."""
    redis, keys = request.app[REDIS], request.app[KEYS]
    waiting = [_shown_request(r) for r in await list_waiting(redis, keys, limit=200)]
    return _render(
        request,
        "callbacks.html",
        "callbacks",
        agents=await agents_with_load(redis, keys),
        waiting=waiting,
        now_ms=int(time.time() * 1000),
    )


async def campaigns_page(request: web.Request) -> web.Response:
    """Every campaign with its progress; `?id=` one campaign's contacts too."""
    redis, keys = request.app[REDIS], request.app[KEYS]
    listed = [
        await campaigns.status(redis, keys, c["id"])
        for c in reversed(await campaigns.list_campaigns(redis, keys))
    ]
    wanted = request.query.get("id", "").strip()
    chosen = next((c for c in listed if c["id"] == wanted), None)
    if chosen is None and listed and not wanted:
        chosen = listed[0]  # the newest
    if chosen is None and wanted:
        raise web.HTTPNotFound(text="no such campaign")
    contacts = await campaigns.export(redis, keys, chosen["id"]) if chosen else []
    for row in contacts:
        row["phone"] = mask_phone_numbers(row["phone"])  # last four digits only
    return _render(
        request,
        "campaigns.html",
        "campaigns",
        campaigns=listed,
        chosen=chosen,
        contacts=contacts[:1000],
        done=request.query.get("done", ""),
    )


async def campaign_action(request: web.Request) -> web.Response:
    """Pause or resume (the console's token and CSRF token checked by the gate)."""
    form = await request.post()
    action, cid = str(form.get("action", "")), str(form.get("id", ""))
    if action not in ("pause", "resume"):
        raise web.HTTPBadRequest(text="action must be pause or resume")
    redis, keys, gate = request.app[REDIS], request.app[KEYS], request.app[GATE]
    try:
        if action == "pause":
            await campaigns.pause(redis, keys, cid, "paused from the console")
        else:
            await campaigns.resume(redis, keys, cid)
    except campaigns.CampaignError as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    raise web.HTTPSeeOther(f"{gate.base}/campaigns?id={quote(cid, safe='')}&done={action}")


async def call_page(request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    deliveries, _ = await data.read_log(request.app[REDIS], request.app[KEYS])
    view = await data.call_view(request.app[REDIS], request.app[KEYS], deliveries, call_id)
    if view is None:
        raise web.HTTPNotFound(text="no such call in the log")
    placed = await request_for_call(request.app[REDIS], request.app[KEYS], call_id)
    dialed = await campaigns.contact_for_call(request.app[REDIS], request.app[KEYS], call_id)
    if dialed is not None:
        dialed["phone"] = mask_phone_numbers(str(dialed.get("phone", "")))  # last four only
    return _render(
        request,
        "call.html",
        "calls",
        c=view,
        callback=None if placed is None else _shown_request(placed),
        campaign=dialed,
        chart=charts.line(view.sentiments),
        redact=request.app[REDACT].scrub,
    )


# -- failed events ---------------------------------------------------------------------


async def failed_page(request: web.Request) -> web.Response:
    records = await failed.list_failed(request.app[REDIS], request.app[KEYS])
    done = request.query.get("done", "")
    n = request.query.get("n", "")
    notice = (
        f"{'Replayed' if done == 'replay' else 'Purged'} {int(n)}."
        if done in ("replay", "purge") and n.isdigit()
        else None
    )
    return _render(
        request,
        "failed.html",
        "failed",
        records=records,
        notice=notice,
        redact=request.app[REDACT].scrub,
    )


async def failed_detail(request: web.Request) -> web.Response:
    record = await failed.get_failed(
        request.app[REDIS], request.app[KEYS], request.match_info["id"]
    )
    if record is None:
        raise web.HTTPNotFound(text="no such failed event")
    body = record.pop("body", None)
    return _render(
        request,
        "failed_detail.html",
        "failed",
        r=record,
        body=pretty(request, body),
        redact=request.app[REDACT].scrub,
    )


async def failed_action(request: web.Request) -> web.Response:
    """Replay or purge: the first POST shows what will happen, the second (confirm=yes) does it."""
    form = await request.post()
    action = str(form.get("action", ""))
    if action not in ("replay", "purge"):
        raise web.HTTPBadRequest(text="action must be replay or purge")
    ids = [str(i) for i in form.getall("ids", [])]
    everything = form.get("all") == "1"
    redis, keys, gate = request.app[REDIS], request.app[KEYS], request.app[GATE]
    if everything:
        ids = [r["delivery_id"] for r in await failed.list_failed(redis, keys)]
    if not ids:
        raise web.HTTPSeeOther(f"{gate.base}/failed")
    if form.get("confirm") != "yes":
        records = [r for r in (await failed.list_failed(redis, keys)) if r["delivery_id"] in ids]
        return _render(request, "confirm.html", "failed", action=action, records=records, ids=ids)
    ttl_ms = request.app[SETTINGS].handler_state_ttl_seconds * 1000
    count = 0
    for delivery_id in ids:
        if action == "replay":
            count += await failed.replay(redis, keys, delivery_id, ttl_ms) is not None
        else:
            count += await failed.purge(redis, keys, delivery_id)
    raise web.HTTPSeeOther(f"{gate.base}/failed?done={action}&n={count}")


# -- erase -----------------------------------------------------------------------------

ERASE_KINDS = ("call", "session", "phone")


async def erase_page(request: web.Request) -> web.Response:
    return _render(
        request, "erase.html", "erase", kinds=ERASE_KINDS, kind="call", value="", removed=None
    )


async def erase_action(request: web.Request) -> web.Response:
    """`ringez-worker erase`: the first POST shows what will go, the second (confirm=yes)
    erases and shows how much went from each place."""
    form = await request.post()
    kind, value = str(form.get("kind", "")), str(form.get("value", "")).strip()
    if kind not in ERASE_KINDS:
        raise web.HTTPBadRequest(text="kind must be call, session or phone")
    if not value or (kind == "phone" and not is_e164(value)):
        raise web.HTTPBadRequest(text="name a call id, a session id or an E.164 number")
    removed = None
    if form.get("confirm") == "yes":
        subject = Subject(**{f"{kind}s": {value}})  # calls, sessions, phones
        removed = await erase.erase(request.app[REDIS], request.app[KEYS], subject)
    return _render(
        request,
        "erase.html",
        "erase",
        kinds=ERASE_KINDS,
        kind=kind,
        value=value,
        removed=removed,
        places=erase.PLACES,
    )


async def _to_base(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"{request.app[GATE].base}/")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_console_app(
    settings: Settings, redis: Redis | None = None, secrets: Iterable[str] = ()
) -> web.Application:
    """The console; raises SettingsError without CONSOLE_TOKEN."""
    if settings.console_token is None:
        raise SettingsError(
            "missing required configuration: CONSOLE_TOKEN (the console's login token)"
        )
    base = settings.console_base_path
    gate = Gate(
        settings.console_token.get_secret_value(),
        base,
        secure_cookie=settings.console_secure_cookie,
    )
    app = web.Application(
        middlewares=[middleware(gate, {f"{base}/login", f"{base}/healthz"})],
        client_max_size=64 * 1024,
    )
    app[GATE] = gate
    app[SETTINGS] = settings
    app[KEYS] = Keys(prefix=settings.key_prefix, queue=settings.queue_name)
    app[REDACT] = Redactor([*settings.secret_values(), *secrets])
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        # Bodies and transcripts are attacker-controlled text: escape everything.
        autoescape=True,
    )
    r = app.router
    r.add_get(f"{base}/login", login_page)
    r.add_post(f"{base}/login", login_submit)
    r.add_post(f"{base}/logout", logout)
    r.add_get(f"{base}/healthz", healthz)
    r.add_get(f"{base}/", overview_page)
    if base:
        r.add_get(base, _to_base)
    r.add_get(f"{base}/api/overview", overview_json)
    r.add_get(f"{base}/overview/chart.svg", overview_chart)
    r.add_get(f"{base}/reports/latest", latest_report_page)
    r.add_get(f"{base}/deliveries", deliveries_page)
    r.add_get(f"{base}/deliveries/{{id}}", delivery_page)
    r.add_get(f"{base}/calls", calls_page)
    r.add_get(f"{base}/callbacks", callbacks_page)
    r.add_get(f"{base}/campaigns", campaigns_page)
    r.add_post(f"{base}/campaigns/action", campaign_action)
    r.add_get(f"{base}/calls/{{call_id}}", call_page)
    r.add_get(f"{base}/failed", failed_page)
    r.add_get(f"{base}/failed/{{id}}", failed_detail)
    r.add_post(f"{base}/failed/action", failed_action)
    r.add_get(f"{base}/erase", erase_page)
    r.add_post(f"{base}/erase", erase_action)
    r.add_static(f"{base}/static", HERE / "static", append_version=False)

    async def redis_ctx(app: web.Application):
        client = redis if redis is not None else redis_from_settings(settings)
        app[REDIS] = client
        yield
        if redis is None:
            await client.aclose()

    app.cleanup_ctx.append(redis_ctx)
    return app
