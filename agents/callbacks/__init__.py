"""The callback queue manager (issue 16; the guide's Pattern 3): requests and the roster
in Redis, assignment by one atomic script, progress driven by webhooks."""

from ringez_worker.agents.callbacks.agent import CallbackAgent, leave_callback_calls_alone
from ringez_worker.agents.callbacks.api import (
    Added,
    add_callback,
    agents_with_load,
    cancel,
    list_waiting,
    load_roster_file,
    request_for_call,
    show,
)
from ringez_worker.agents.callbacks.models import CallbackRequest, RosterAgent

__all__ = [
    "Added",
    "CallbackAgent",
    "CallbackRequest",
    "RosterAgent",
    "add_callback",
    "agents_with_load",
    "cancel",
    "leave_callback_calls_alone",
    "list_waiting",
    "load_roster_file",
    "request_for_call",
    "show",
]
