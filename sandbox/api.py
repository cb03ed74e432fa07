"""The Ringez REST API (ringez-api.md, "Endpoints") over the sandbox state."""

from __future__ import annotations

from aiohttp import web

from ringez_worker.sandbox import ai, analytics
from ringez_worker.sandbox.engine import EVENTS, Subscription
from ringez_worker.sandbox.keys import SANDBOX
from ringez_worker.sandbox.models import CALL_STATUSES, E164, SandboxError, iso, new_id
from ringez_worker.sandbox.responses import (
    json_response,
    opt_dict,
    opt_number,
    opt_str,
    opt_url,
    query_int,
    read_json,
    req_str,
)


def _replayed(replayed: bool) -> dict[str, str] | None:
    return {"Idempotent-Replayed": "true"} if replayed else None


# Sessions.


async def create_session(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    body = await read_json(request)
    session = sb.state.create_session(
        opt_str(body, "session_type") or "guest",
        agent_context=opt_dict(body, "agent_context"),
        consent=opt_dict(body, "user_consent"),
    )
    return json_response(
        {
            "session_id": session.session_id,
            "session_token": session.token,
            "expires_at": iso(session.expires_at),
            "wallet_balance": session.wallet.view(),
            "rate_limits": {
                "calls_per_hour": sb.config.calls_per_hour,
                "max_call_duration": sb.config.max_call_duration,
            },
        }
    )


async def get_session(request: web.Request) -> web.Response:
    session = request.app[SANDBOX].state.get_session(request.match_info["session_id"])
    return json_response(
        {
            "session_id": session.session_id,
            "active": session.active,
            "created_at": iso(session.created_at),
            "wallet_balance": session.wallet.view(),
            "calls_made": session.calls_made,
            "total_duration": session.total_duration,
        }
    )


async def delete_session(request: web.Request) -> web.Response:
    session, _ = request.app[SANDBOX].state.close_session(request.match_info["session_id"])
    return json_response(
        {
            "success": True,
            "message": "session closed",
            "final_balance": session.wallet.view(),
        }
    )


# Wallet.


async def add_credits(request: web.Request) -> web.Response:
    body = await read_json(request)
    tx, replayed = request.app[SANDBOX].state.add_credits(
        req_str(body, "session_id"),
        payment_method=body.get("payment_method"),
        plan=body.get("plan"),
        currency=body.get("currency"),
        amount=body.get("amount"),
        payment_token=body.get("payment_token"),
        idempotency_key=body.get("idempotency_key"),
    )
    return json_response(tx.view(), headers=_replayed(replayed))


async def balance(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    session = sb.state.get_session(request.query.get("session_id"))
    wallet, tx = sb.state.lagged_wallet(session, sb.faults.config.balance_lag_seconds)
    return json_response(
        {
            "session_id": session.session_id,
            "balance": wallet,
            "last_transaction": tx.view() if tx is not None else None,
        }
    )


# Calls.


async def initiate_call(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    body = await read_json(request)
    call, replayed = sb.state.initiate_call(
        req_str(body, "session_id"),
        body.get("to_number"),
        body.get("from_number"),
        settings=opt_dict(body, "call_settings"),
        metadata=opt_dict(body, "metadata"),
        webhook_url=opt_url(body, "webhook_url"),
        idempotency_key=opt_str(body, "idempotency_key"),
    )
    if not replayed:
        sb.start_call(call)
    return json_response(
        {
            "call_id": call.call_id,
            # The answer to the initiating request, even when replayed after the call moved on.
            "status": "initiated",
            "to_number": call.to_number,
            "from_number": call.from_number,
            "estimated_rate": call.rate,
            "currency": call.currency,
            "created_at": iso(call.created_at),
        },
        headers=_replayed(replayed),
    )


async def get_call(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    call = sb.state.get_call(request.match_info["call_id"])
    return json_response(call.view(sb.state.now()))


async def call_action(request: web.Request) -> web.Response:
    body = await read_json(request)
    result = request.app[SANDBOX].state.act(
        request.match_info["call_id"], body.get("action"), opt_dict(body, "parameters")
    )
    return json_response(result)


async def report_issue(request: web.Request) -> web.Response:
    body = await read_json(request)
    sb = request.app[SANDBOX]
    return json_response(sb.state.report_issue(request.match_info["call_id"], body))


async def hang_up(request: web.Request) -> web.Response:
    """Hang up; on a call that already ended, answer with how it ended (DELETE is idempotent)."""
    sb = request.app[SANDBOX]
    call = sb.state.complete_call(sb.state.get_call(request.match_info["call_id"]))
    session = sb.state.sessions[call.session_id]
    return json_response(
        {
            "call_id": call.call_id,
            "status": call.status,
            "duration": call.duration,
            "cost": call.cost,
            "currency": call.currency,
            "remaining_balance": session.wallet.view(),
            "ended_at": iso(call.ended_at) if call.ended_at is not None else None,
        }
    )


async def call_history(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    session_id = request.query.get("session_id")
    if session_id is not None:
        sb.state.get_session(session_id)
    status = request.query.get("status")
    if status is not None and status not in CALL_STATUSES:
        raise SandboxError(400, "invalid_query", f"status must be one of {sorted(CALL_STATUSES)}")
    limit = query_int(request, "limit", 20, 1, 100)
    offset = query_int(request, "offset", 0, 0, 10**9)
    calls, total = sb.state.history(session_id, status, limit, offset)
    return json_response(
        {
            "calls": [c.summary() for c in calls],
            "pagination": {
                "total": total,
                "limit": limit,
                "offset": offset,
                "has_more": offset + len(calls) < total,
            },
        }
    )


async def batch_calls(request: web.Request) -> web.Response:
    """Place several calls; every number is checked before any call is placed."""
    sb = request.app[SANDBOX]
    body = await read_json(request)
    session_id = req_str(body, "session_id")
    entries = body.get("calls")
    if (
        not isinstance(entries, list)
        or not entries
        or not all(isinstance(e, dict) for e in entries)
    ):
        raise SandboxError(400, "invalid_field", "calls must be a non-empty list of objects")
    settings = opt_dict(body, "call_settings")
    sb.state.get_session(session_id)
    for n, entry in enumerate(entries):
        to = entry.get("to_number")
        if not isinstance(to, str) or not E164.match(to):
            raise SandboxError(400, "invalid_phone_number", f"calls[{n}].to_number must be E.164")
    placed = []
    batch_id = new_id("batch")
    for entry in entries:
        call, _ = sb.state.initiate_call(
            session_id,
            entry["to_number"],
            settings=settings,
            # The batch id marks a campaign call for analytics' campaign_calls.
            metadata={**opt_dict(entry, "metadata"), "batch_id": batch_id},
            webhook_url=opt_url(body, "webhook_url"),
        )
        sb.start_call(call)
        placed.append({"call_id": call.call_id, "to_number": call.to_number, "status": "initiated"})
    return json_response({"batch_id": batch_id, "calls": placed})


# Transcription.


async def transcribe(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    call = sb.state.get_call(request.match_info["call_id"])
    body = await read_json(request)
    call.language = opt_str(body, "language") or call.language
    call.transcription_id = call.transcription_id or new_id("tr")
    return json_response(
        {
            "transcription_id": call.transcription_id,
            # Not served: the sandbox streams transcripts as transcription.updated webhooks.
            "websocket_url": f"ws://{request.host}/_sandbox/ws/transcripts/{call.call_id}",
        }
    )


async def transcript(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    call = sb.state.get_call(request.match_info["call_id"])
    return json_response(
        {
            "call_id": call.call_id,
            "transcript": call.transcript,
            "language": call.language,
            "duration": call.elapsed(sb.state.now()),
        }
    )


# AI helpers.


async def intent_detection(request: web.Request) -> web.Response:
    body = await read_json(request)
    text = req_str(body, "transcript_segment")
    return json_response(ai.detect_intent(text, request.app[SANDBOX].routing))


async def call_routing(request: web.Request) -> web.Response:
    await read_json(request)
    return json_response(ai.route_call(request.app[SANDBOX].routing))


async def sentiment_analysis(request: web.Request) -> web.Response:
    body = await read_json(request)
    text = req_str(body, "transcript_segment")
    include = body.get("include_recommendations", True)
    return json_response(ai.analyze_sentiment(text, include is not False))


async def voice_synthesis(request: web.Request) -> web.Response:
    body = await read_json(request)
    text = req_str(body, "text")
    if len(text) > 5000:
        raise SandboxError(400, "text_too_long", "text must be at most 5000 characters")
    output_format = opt_str(body, "output_format") or "mp3"
    if output_format not in ("mp3", "wav", "ogg"):
        raise SandboxError(400, "invalid_field", "output_format must be mp3, wav or ogg")
    speed = opt_number(body, "speed", 1.0, 0.25, 4.0)
    opt_number(body, "pitch", 0.0, -20.0, 20.0)
    base_url = f"{request.scheme}://{request.host}"
    voice = opt_str(body, "voice") or "default"
    return json_response(ai.synthesize(text, voice, speed, output_format, base_url))


# Analytics.


async def call_metrics(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    session_id = request.query.get("session_id")
    if session_id is not None:
        sb.state.get_session(session_id)
    group_by = request.query.get("group_by", "day")
    if group_by not in ("day", "status", "hour"):
        raise SandboxError(400, "invalid_query", "group_by must be day, status or hour")
    return json_response(
        analytics.call_metrics(
            sb.state,
            session_id,
            request.query.get("start_date"),
            request.query.get("end_date"),
            group_by,
        )
    )


async def spending(request: web.Request) -> web.Response:
    return json_response(
        analytics.spending(request.app[SANDBOX].state, request.query.get("session_id"))
    )


# Webhooks.


async def subscribe(request: web.Request) -> web.Response:
    sb = request.app[SANDBOX]
    body = await read_json(request)
    session = sb.state.get_session(req_str(body, "session_id"))
    url = opt_url(body, "webhook_url")
    if url is None:
        raise SandboxError(400, "missing_field", "webhook_url is required")
    events = body.get("events") or []
    if not isinstance(events, list) or not all(isinstance(e, str) and e in EVENTS for e in events):
        raise SandboxError(400, "invalid_events", f"events must be a list of {sorted(EVENTS)}")
    sub = Subscription(
        webhook_id=new_id("wh"),
        session_id=session.session_id,
        url=url,
        events=frozenset(events),
        secret=opt_str(body, "secret"),
    )
    sb.subscriptions[sub.webhook_id] = sub
    return json_response(
        {
            "webhook_id": sub.webhook_id,
            "status": "active",
            "webhook_url": url,
            "events": sorted(sub.events) or sorted(EVENTS),
        }
    )


def add_api_routes(app: web.Application, base: str) -> None:
    """Register every Ringez endpoint under `base` (e.g. /api/v1)."""
    r = app.router
    r.add_post(f"{base}/sessions/create", create_session)
    r.add_get(f"{base}/sessions/{{session_id}}", get_session)
    r.add_delete(f"{base}/sessions/{{session_id}}", delete_session)
    r.add_post(f"{base}/wallet/add-credits", add_credits)
    r.add_get(f"{base}/wallet/balance", balance)
    r.add_post(f"{base}/calls/initiate", initiate_call)
    # Before /calls/{call_id}, which would otherwise take "history" for an id.
    r.add_get(f"{base}/calls/history", call_history)
    r.add_get(f"{base}/calls/{{call_id}}", get_call)
    r.add_delete(f"{base}/calls/{{call_id}}", hang_up)
    r.add_post(f"{base}/calls/{{call_id}}/actions", call_action)
    r.add_post(f"{base}/calls/{{call_id}}/issues", report_issue)
    r.add_post(f"{base}/calls/{{call_id}}/transcribe", transcribe)
    r.add_post(f"{base}/batch/calls", batch_calls)
    r.add_get(f"{base}/transcripts/{{call_id}}", transcript)
    r.add_post(f"{base}/agents/intent-detection", intent_detection)
    r.add_post(f"{base}/agents/call-routing", call_routing)
    r.add_post(f"{base}/agents/sentiment-analysis", sentiment_analysis)
    r.add_post(f"{base}/agents/voice-synthesis", voice_synthesis)
    r.add_get(f"{base}/analytics/call-metrics", call_metrics)
    r.add_get(f"{base}/analytics/spending", spending)
    r.add_post(f"{base}/webhooks/subscribe", subscribe)
