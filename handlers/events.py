"""Typed Ringez webhook events: one pydantic model per event in the contract."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from ringez_worker.timestamps import parse_timestamp


def _timestamp(value: object) -> datetime:
    # The receiver hands over the datetime it already parsed with the same function.
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    return parse_timestamp(value)


# Always aware: the shared parser decides, never pydantic's own (wider) datetime rules.
Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]


class _Data(BaseModel):
    # Ringez may add fields at any time; keep them instead of failing.
    model_config = ConfigDict(extra="allow")


class CallData(_Data):
    call_id: str
    session_id: str


class CallAnsweredData(CallData):
    answered_at: str | None = None


class CallCompletedData(CallData):
    duration: float | None = None
    cost: Any = None


class CallFailedData(CallData):
    reason: str | None = None


class TranscriptionData(CallData):
    text: str = ""
    speaker: str | None = None
    is_final: bool = True
    confidence: float | None = None


class Balance(_Data):
    minutes: float | None = None
    value: float | None = None
    currency: str | None = None


class BalanceLowData(_Data):
    session_id: str
    call_id: str | None = None
    balance: Balance


class Event(BaseModel):
    """Any event: what handlers registered for `*` or for a custom event name receive."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event: str
    timestamp: Timestamp
    data: _Data
    delivery_id: str = ""

    @property
    def call_id(self) -> str | None:
        return getattr(self.data, "call_id", None)

    @property
    def session_id(self) -> str | None:
        return getattr(self.data, "session_id", None)


class CallInitiated(Event):
    data: CallData


class CallRinging(Event):
    data: CallData


class CallAnswered(Event):
    data: CallAnsweredData


class CallCompleted(Event):
    data: CallCompletedData


class CallFailed(Event):
    data: CallFailedData


class TranscriptionUpdated(Event):
    data: TranscriptionData


class BalanceLow(Event):
    data: BalanceLowData


EVENT_MODELS: dict[str, type[Event]] = {
    "call.initiated": CallInitiated,
    "call.ringing": CallRinging,
    "call.answered": CallAnswered,
    "call.completed": CallCompleted,
    "call.failed": CallFailed,
    "transcription.updated": TranscriptionUpdated,
    "balance.low": BalanceLow,
}


# The contract's event names.
EVENT_NAMES = frozenset(EVENT_MODELS)


class InvalidEvent(Exception):
    """A known event whose data does not match the contract: retrying cannot help."""


def parse_event(payload: dict[str, Any], delivery_id: str = "") -> Event:
    """The typed model for `payload` (a generic Event for names outside the contract)."""
    model = EVENT_MODELS.get(payload.get("event", ""), Event)
    try:
        return model.model_validate({**payload, "delivery_id": delivery_id})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise InvalidEvent(
            f"{payload.get('event')!r} does not match the contract: {problems}"
        ) from None
