"""The sandbox's configuration: plain dataclasses, so tests build them inline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ringez_worker.settings import Settings

# Ringez's sandbox numbers (ringez-api.md, "Sandbox").
ANSWERS = "+15005550006"
BUSY = "+15005550001"
NO_ANSWER = "+15005550002"
# Campaign test numbers (README "Sandbox"): +1500666 then four digits; the tens digit picks
# the outcome (1 busy, 2 never answered, anything else answers) and the last digit is the
# DTMF digit pressed when asked (0: nothing, a timeout), e.g. +15006660013 is busy,
# +15006660035 answers and presses 5.
CAMPAIGN_RANGE = "+1500666"


def outcome_of(number: str) -> str:
    """How a call to `number` goes: "busy", "no-answer" or "answers"."""
    if number == BUSY:
        return "busy"
    if number == NO_ANSWER:
        return "no-answer"
    if number.startswith(CAMPAIGN_RANGE) and len(number) == len(CAMPAIGN_RANGE) + 4:
        return {"1": "busy", "2": "no-answer"}.get(number[-2], "answers")
    return "answers"


@dataclass
class RouteConfig:
    """What `POST /agents/call-routing` answers; flip `agent_available` to test fallbacks."""

    route_to: str = ANSWERS
    route_type: str = "direct"
    agent_available: bool = True
    estimated_wait_time: int = 0
    fallback_options: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"route_type": "voicemail", "route_to": ANSWERS},
            {"route_type": "ivr", "route_to": "+15005550007"},
        ]
    )


@dataclass
class EmitterConfig:
    """Webhook delivery: bounded attempts with capped exponential backoff."""

    max_attempts: int = 5
    backoff_seconds: float = 0.5
    backoff_max_seconds: float = 8.0
    timeout_seconds: float = 5.0
    # Send every event twice (byte-identical), as a sender retrying after a lost answer does.
    duplicate: bool = False


@dataclass
class FaultConfig:
    """Answer a fraction of API requests with 503 or 429, deterministically for a seed."""

    rate_503: float = 0.0
    rate_429: float = 0.0
    retry_after_seconds: int = 1
    seed: int = 0
    # Statuses for the next requests, in order, before the rates apply (0 lets one through).
    fail_next: list[int] = field(default_factory=list)
    path_prefix: str = "/api/v1"
    # A wallet read from a lagging replica: `GET /wallet/balance` leaves out credits added
    # in the last this-many seconds (the add-credits answer itself is always current).
    balance_lag_seconds: float = 0.0


@dataclass
class SandboxConfig:
    """Everything the sandbox app reads; every field has a default fit for `ringez-worker dev`."""

    webhook_secret: str = "whsec_sandbox"
    # Where events go when neither the call's webhook_url nor a subscription names a receiver.
    receiver_url: str | None = None
    base_path: str = "/api/v1"
    # None: any `sk_test_…` key; otherwise only these keys.
    api_keys: frozenset[str] | None = None
    require_agent_id: bool = False
    default_caller_id: str = "+15005550000"
    initial_minutes: float = 30.0
    low_balance_minutes: float = 5.0
    rates: dict[str, float] = field(default_factory=lambda: {"USD": 0.05, "INR": 4.0})
    plans: dict[str, float] = field(
        default_factory=lambda: {"starter": 60.0, "popular": 200.0, "best_value": 600.0}
    )
    calls_per_hour: int = 100
    max_call_duration: int = 3600
    idempotency_window_seconds: float = 300.0
    # Time between a simulated call's steps and between scenario events.
    pacing_seconds: float = 0.25
    # How long +15005550002 rings before the call fails with no-answer.
    no_answer_seconds: float = 30.0
    # How long the `angry` caller waits for a transfer before hanging up.
    escalation_wait_seconds: float = 20.0
    # How long a REST-placed call talks after a transfer before it completes (callbacks).
    talk_seconds: float = 2.0
    request_log_limit: int = 10_000
    routing: RouteConfig = field(default_factory=RouteConfig)
    emitter: EmitterConfig = field(default_factory=EmitterConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Wall clock in epoch seconds; tests inject one to cross the idempotency window.
    clock: Callable[[], float] = time.time


def config_from_settings(settings: Settings, **overrides: Any) -> SandboxConfig:
    """A config whose webhooks reach this machine's receiver, signed with its current secret."""
    secrets = settings.webhook_secrets
    base: dict[str, Any] = {
        "receiver_url": f"http://127.0.0.1:{settings.port}{settings.webhook_path}",
    }
    if secrets:
        base["webhook_secret"] = secrets[0].decode()
    base.update(overrides)
    return SandboxConfig(**base)
