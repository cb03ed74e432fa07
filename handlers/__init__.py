"""Route an event to the handlers registered for it."""

if __name__ != "ringez_worker.handlers":  # the folder maps into the namespace (pyproject.toml)
    raise ImportError(
        f"import ringez_worker.handlers, not {__name__}: this folder is installed as "
        "ringez_worker.handlers, and a second name would load a second copy of its modules"
    )

from ringez_worker.handlers.context import Context, RingezNotConfigured, Superseded
from ringez_worker.handlers.events import (
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
from ringez_worker.handlers.router import ANY, Handler, Router

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
    "RingezNotConfigured",
    "Router",
    "Superseded",
    "TranscriptionUpdated",
    "parse_event",
]
