"""The API's resource groups, named as in the integration guide's Python SDK."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from ringez_worker.api import models as m
from ringez_worker.api.errors import InvalidId, InvalidResponse

if TYPE_CHECKING:
    from ringez_worker.api.client import RingezClient

M = TypeVar("M", bound=BaseModel)
Obj = Mapping[str, Any] | BaseModel


class Resource:
    """One group of endpoints, sharing the client's transport and headers."""

    def __init__(self, client: RingezClient) -> None:
        self._client = client

    async def _send(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        attempts: int | None = None,
    ) -> M:
        data = await self._client.request(
            method, path, json=json, params=params, idempotent=idempotent, attempts=attempts
        )
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            # Field locations only: the input values are the API's data, not ours to echo.
            where = ", ".join(
                ".".join(str(p) for p in err["loc"]) or "body"
                for err in exc.errors(include_input=False, include_url=False)
            )
            raise InvalidResponse(
                f"answer to {method} {path} does not match {model.__name__} ({where})",
                status=200,
                method=method,
                path=path,
            ) from None


# One plain path segment: unreserved characters only (RFC 3986), so an id can never add,
# remove (`.`, `..`, which clients and servers collapse) or re-encode a segment.
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_~.-]{1,256}")


def _seg(value: str) -> str:
    """`value` as one path segment; InvalidId, before any request, if it is not plain.

    Ids often come from webhook payloads: `..` as a call id would turn
    `/transcripts/{id}` into `GET /api/v1/`.
    """
    if not isinstance(value, str) or not _PLAIN_SEGMENT.fullmatch(value) or not value.strip("."):
        raise InvalidId("an id must be 1-256 of A-Z a-z 0-9 _ ~ . - and not only dots")
    return value


def _obj(value: Obj | None) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    return dict(value) if value is not None else None


def _fields(**values: Any) -> dict[str, Any]:
    """A request body or query without the fields the caller left out."""
    return {name: value for name, value in values.items() if value is not None}


def _idempotency_key(given: str | None) -> str:
    # Made once per logical call, before the transport's retry loop, so every attempt of
    # this call carries the same key and the API deduplicates them.
    return given if given else uuid.uuid4().hex


def _when(value: str | date | datetime | None) -> str | None:
    return value.isoformat() if isinstance(value, date | datetime) else value


def _text(text: str | None, transcript_segment: str | None) -> str:
    if (text is None) == (transcript_segment is None):
        raise TypeError("pass exactly one of text= or transcript_segment=")
    return text if text is not None else transcript_segment  # type: ignore[return-value]


class Sessions(Resource):
    async def create(
        self,
        *,
        session_type: str,
        agent_context: Obj | None = None,
        user_consent: m.UserConsent | Mapping[str, Any] | None = None,
    ) -> m.SessionCreated:
        """POST /sessions/create; session_type is "guest" or "authenticated"."""
        body = _fields(
            session_type=session_type,
            agent_context=_obj(agent_context),
            user_consent=_obj(user_consent),
        )
        return await self._send(m.SessionCreated, "POST", "/sessions/create", json=body)

    async def get(self, session_id: str) -> m.Session:
        """GET /sessions/{session_id}."""
        return await self._send(m.Session, "GET", f"/sessions/{_seg(session_id)}")

    async def delete(self, session_id: str) -> m.SessionClosed:
        """DELETE /sessions/{session_id}: close the session, returning the final balance."""
        return await self._send(m.SessionClosed, "DELETE", f"/sessions/{_seg(session_id)}")


class Wallet(Resource):
    async def balance(self, session_id: str) -> m.WalletBalance:
        """GET /wallet/balance?session_id=."""
        params = {"session_id": session_id}
        return await self._send(m.WalletBalance, "GET", "/wallet/balance", params=params)

    async def add_credits(
        self,
        *,
        session_id: str,
        payment_method: str,
        plan: str | None = None,
        currency: str | None = None,
        amount: float | None = None,
        payment_token: str | None = None,
        idempotency_key: str | None = None,
    ) -> m.CreditsAdded:
        """POST /wallet/add-credits, deduplicated by `idempotency_key` (generated if omitted)."""
        body = _fields(
            session_id=session_id,
            payment_method=payment_method,
            plan=plan,
            currency=currency,
            amount=amount,
            payment_token=payment_token,
            idempotency_key=_idempotency_key(idempotency_key),
        )
        return await self._send(m.CreditsAdded, "POST", "/wallet/add-credits", json=body)


class Calls(Resource):
    async def initiate(
        self,
        *,
        session_id: str,
        to_number: str,
        from_number: str | None = None,
        privacy_mode: bool | None = None,
        caller_id_name: str | None = None,
        call_settings: m.CallSettings | Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> m.CallInitiated:
        """POST /calls/initiate; retries are safe: one `idempotency_key` for all attempts."""
        body = _fields(
            session_id=session_id,
            to_number=to_number,
            from_number=from_number,
            privacy_mode=privacy_mode,
            caller_id_name=caller_id_name,
            call_settings=_obj(call_settings),
            webhook_url=webhook_url,
            metadata=_obj(metadata),
            idempotency_key=_idempotency_key(idempotency_key),
        )
        return await self._send(m.CallInitiated, "POST", "/calls/initiate", json=body)

    async def get(self, call_id: str) -> m.CallStatus:
        """GET /calls/{call_id}: status, duration, cost, quality."""
        return await self._send(m.CallStatus, "GET", f"/calls/{_seg(call_id)}")

    async def action(
        self,
        call_id: str,
        action: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        attempts: int | None = None,
    ) -> m.CallActionResult:
        """POST /calls/{call_id}/actions with any action name and parameters.

        Actions carry no idempotency key, so a transfer or DTMF is never re-sent once it
        may have run: an ambiguous failure raises with `maybe_executed` set."""
        body = _fields(action=action, parameters=_obj(parameters))
        path = f"/calls/{_seg(call_id)}/actions"
        return await self._send(
            m.CallActionResult, "POST", path, json=body, idempotent=False, attempts=attempts
        )

    async def dtmf(self, call_id: str, digits: str) -> m.CallActionResult:
        """Send DTMF tones."""
        return await self.action(call_id, "dtmf", {"digits": digits})

    async def hold(self, call_id: str) -> m.CallActionResult:
        """Put the call on hold."""
        return await self.action(call_id, "hold")

    async def unhold(self, call_id: str) -> m.CallActionResult:
        """Take the call off hold."""
        return await self.action(call_id, "unhold")

    async def transfer(
        self,
        call_id: str,
        transfer_to: str,
        *,
        transfer_note: str | None = None,
        reason: str | None = None,
        attempts: int | None = None,
    ) -> m.CallActionResult:
        """Transfer the call to `transfer_to` (E.164), with an optional note and reason."""
        parameters = _fields(transfer_to=transfer_to, transfer_note=transfer_note, reason=reason)
        return await self.action(call_id, "transfer", parameters, attempts=attempts)

    async def report_issue(
        self, call_id: str, issue: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> m.IssueReported:
        """POST /calls/{call_id}/issues (the guide's `calls.reportIssue`), e.g.
        `{"type": "quality", "metrics": {...}}`; one idempotency key for all attempts."""
        body = {**issue, "idempotency_key": _idempotency_key(idempotency_key)}
        path = f"/calls/{_seg(call_id)}/issues"
        return await self._send(m.IssueReported, "POST", path, json=body)

    async def play_audio(self, call_id: str, audio_url: str) -> m.CallActionResult:
        """The guide's `calls.play_audio` (Pattern 2): a `play` action, never re-sent."""
        return await self.action(call_id, "play", {"audio_url": audio_url})

    async def collect_input(self, call_id: str, options: Mapping[str, Any]) -> m.InputCollected:
        """The guide's `calls.collect_input` (Pattern 2), e.g. `{"type": "dtmf", "timeout":
        10, "num_digits": 1}`: a `collect` action answered once the digits are in
        (`digits` None on a timeout); never re-sent."""
        body = {"action": "collect", "parameters": dict(options)}
        path = f"/calls/{_seg(call_id)}/actions"
        return await self._send(m.InputCollected, "POST", path, json=body, idempotent=False)

    async def switch_codec(self, call_id: str, codec: str) -> m.CallActionResult:
        """The guide's `calls.switchCodec`: a `switch_codec` action, never re-sent."""
        return await self.action(call_id, "switch_codec", {"codec": codec})

    async def hangup(self, call_id: str) -> m.CallEnded:
        """DELETE /calls/{call_id}: end the call, returning its duration and cost."""
        return await self._send(m.CallEnded, "DELETE", f"/calls/{_seg(call_id)}")

    async def history(
        self,
        session_id: str | None = None,
        *,
        limit: int | None = None,
        offset: int | None = None,
        status: str | None = None,
    ) -> m.CallHistory:
        """GET /calls/history, one page."""
        params = _fields(session_id=session_id, limit=limit, offset=offset, status=status)
        return await self._send(m.CallHistory, "GET", "/calls/history", params=params)

    async def transcribe(
        self,
        call_id: str,
        *,
        language: str | None = None,
        webhook_url: str | None = None,
        interim_results: bool | None = None,
        speaker_labels: bool | None = None,
    ) -> m.TranscriptionStarted:
        """POST /calls/{call_id}/transcribe: start live transcription."""
        body = _fields(
            language=language,
            webhook_url=webhook_url,
            interim_results=interim_results,
            speaker_labels=speaker_labels,
        )
        path = f"/calls/{_seg(call_id)}/transcribe"
        return await self._send(m.TranscriptionStarted, "POST", path, json=body)


class Batch(Resource):
    async def calls(
        self,
        *,
        session_id: str,
        calls: Sequence[m.BatchCall | Mapping[str, Any]],
        call_settings: m.CallSettings | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> m.BatchCalls:
        """POST /batch/calls: start several calls, deduplicated by one `idempotency_key`."""
        body = _fields(
            session_id=session_id,
            calls=[_obj(call) for call in calls],
            call_settings=_obj(call_settings),
            idempotency_key=_idempotency_key(idempotency_key),
        )
        return await self._send(m.BatchCalls, "POST", "/batch/calls", json=body)


class Transcripts(Resource):
    async def get(self, call_id: str) -> m.Transcript:
        """GET /transcripts/{call_id}."""
        return await self._send(m.Transcript, "GET", f"/transcripts/{_seg(call_id)}")


class Agents(Resource):
    async def detect_intent(
        self,
        transcript_segment: str | None = None,
        *,
        text: str | None = None,
        call_id: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> m.IntentDetection:
        """POST /agents/intent-detection (`text=` is the guide's alias of transcript_segment)."""
        body = _fields(
            call_id=call_id,
            transcript_segment=_text(text, transcript_segment),
            context=_obj(context),
        )
        return await self._send(m.IntentDetection, "POST", "/agents/intent-detection", json=body)

    async def route_call(
        self,
        *,
        caller_info: Mapping[str, Any] | None = None,
        routing_criteria: Mapping[str, Any] | None = None,
        business_hours: Any = None,
    ) -> m.CallRouting:
        """POST /agents/call-routing: where to send a caller."""
        body = _fields(
            caller_info=_obj(caller_info),
            routing_criteria=_obj(routing_criteria),
            business_hours=business_hours,
        )
        return await self._send(m.CallRouting, "POST", "/agents/call-routing", json=body)

    async def analyze_sentiment(
        self,
        call_id: str | None = None,
        transcript_segment: str | None = None,
        *,
        text: str | None = None,
        include_recommendations: bool = True,
    ) -> m.SentimentAnalysis:
        """POST /agents/sentiment-analysis (`text=` is the guide's alias of transcript_segment)."""
        body = _fields(
            call_id=call_id,
            transcript_segment=_text(text, transcript_segment),
            include_recommendations=include_recommendations,
        )
        path = "/agents/sentiment-analysis"
        return await self._send(m.SentimentAnalysis, "POST", path, json=body)

    async def synthesize_voice(
        self,
        text: str,
        *,
        voice: str | None = None,
        speed: float | None = None,
        pitch: float | None = None,
        output_format: str | None = None,
    ) -> m.VoiceSynthesis:
        """POST /agents/voice-synthesis: text to an audio URL."""
        body = _fields(
            text=text, voice=voice, speed=speed, pitch=pitch, output_format=output_format
        )
        return await self._send(m.VoiceSynthesis, "POST", "/agents/voice-synthesis", json=body)


class Analytics(Resource):
    async def call_metrics(
        self,
        *,
        session_id: str | None = None,
        start_date: str | date | datetime | None = None,
        end_date: str | date | datetime | None = None,
        group_by: str | None = None,
    ) -> m.CallMetrics:
        """GET /analytics/call-metrics."""
        query = m.CallMetricsQuery(
            session_id=session_id,
            start_date=_when(start_date),
            end_date=_when(end_date),
            group_by=group_by,
        )
        params = _fields(**query.model_dump(exclude_none=True))
        return await self._send(m.CallMetrics, "GET", "/analytics/call-metrics", params=params)

    async def spending(self) -> m.Spending:
        """GET /analytics/spending."""
        return await self._send(m.Spending, "GET", "/analytics/spending")


class Webhooks(Resource):
    async def subscribe(
        self,
        *,
        session_id: str,
        webhook_url: str,
        events: Sequence[str],
        secret: str | SecretStr,
    ) -> m.WebhookSubscription:
        """POST /webhooks/subscribe: deliver `events` to `webhook_url`, signed with `secret`."""
        raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        body = {
            "session_id": session_id,
            "webhook_url": webhook_url,
            "events": list(events),
            "secret": raw,
        }
        return await self._send(m.WebhookSubscription, "POST", "/webhooks/subscribe", json=body)
