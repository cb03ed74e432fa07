"""Route an event to the handlers registered for it."""

from handlers.context import Context, Superseded
from handlers.events import (
    BalanceLow,
    CallAnswered,
    CallCompleted,
    CallFailed,
    CallInitiated,
    CallRinging,
    Event,
    TranscriptionUpdated,
    parse_event,
)
from handlers.router import ANY, Handler, Router

__all__ = [
    "ANY",
    "BalanceLow",
    "CallAnswered",
    "CallCompleted",
    "CallFailed",
    "CallInitiated",
    "CallRinging",
    "Context",
    "Event",
    "Handler",
    "Router",
    "Superseded",
    "TranscriptionUpdated",
    "parse_event",
]
