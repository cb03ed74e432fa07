"""The sandbox's records (wallets, transactions, sessions, calls) and the API error."""

from __future__ import annotations

import asyncio
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
ACTIVE = frozenset({"initiated", "ringing", "in-progress"})
CALL_STATUSES = frozenset(
    {"initiated", "ringing", "in-progress", "completed", "failed", "busy", "no-answer"}
)


class SandboxError(Exception):
    """An API error: the status, a stable code and a message for the JSON error body."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def iso(ts: float) -> str:
    """Epoch seconds as the ISO 8601 UTC form Ringez uses."""
    stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def check_e164(value: object, name: str) -> str:
    """Return `value` if it is an E.164 number; otherwise a 400."""
    if not isinstance(value, str) or not E164.match(value):
        raise SandboxError(400, "invalid_phone_number", f"{name} must be an E.164 number")
    return value


def billable_minutes(duration: float) -> int:
    """Ringez bills every started minute of an answered call, at least one."""
    return max(1, math.ceil(duration / 60))


@dataclass
class Wallet:
    minutes: float
    currency: str
    rate: float  # price of one minute in `currency`

    def view(self) -> dict[str, Any]:
        return {
            "minutes": round(self.minutes, 2),
            "value": round(self.minutes * self.rate, 2),
            "currency": self.currency,
        }


@dataclass
class Transaction:
    transaction_id: str
    session_id: str
    status: str
    minutes_added: float
    amount: float
    currency: str
    payment_method: str
    plan: str | None
    created_at: float
    new_balance: dict[str, Any]

    def view(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "status": self.status,
            "minutes_added": self.minutes_added,
            "amount": self.amount,
            "currency": self.currency,
            "new_balance": self.new_balance,
            "payment_receipt_url": f"https://sandbox.ringez.test/receipts/{self.transaction_id}",
            "created_at": iso(self.created_at),
        }


@dataclass
class Session:
    session_id: str
    session_type: str
    token: str
    created_at: float
    expires_at: float
    wallet: Wallet
    agent_context: dict[str, Any]
    consent: dict[str, Any]
    max_spend_limit: float | None
    active: bool = True
    calls_made: int = 0
    total_duration: int = 0
    total_spent: float = 0.0
    call_times: list[float] = field(default_factory=list)
    last_transaction: Transaction | None = None


@dataclass
class Call:
    call_id: str
    session_id: str
    to_number: str
    from_number: str
    created_at: float
    rate: float
    currency: str
    settings: dict[str, Any]
    metadata: dict[str, Any]
    webhook_url: str | None
    status: str = "initiated"
    answered_at: float | None = None
    ended_at: float | None = None
    duration: int = 0
    minutes_charged: int = 0
    cost: float = 0.0
    reason: str | None = None
    on_hold: bool = False
    transferred_to: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    language: str = "en-US"
    transcription_id: str | None = None
    # The wallet balance when this call's charge took it under the low-balance threshold.
    balance_low: dict[str, Any] | None = None
    # Quality metrics a scenario set (poor_quality), over the defaults below.
    quality: dict[str, float] = field(default_factory=dict)
    codec: str | None = None
    played: list[str] = field(default_factory=list)  # audio URLs of `play` actions
    issues: list[dict[str, Any]] = field(default_factory=list)
    # Set on every change so a simulation or scenario driving the call wakes up.
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def touch(self) -> None:
        self.changed.set()

    def elapsed(self, now: float) -> int:
        """Seconds since answer: the final duration once ended, 0 if never answered."""
        if not self.active or self.answered_at is None:
            return self.duration
        return max(0, round(now - self.answered_at))

    def summary(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "session_id": self.session_id,
            "status": self.status,
            "to_number": self.to_number,
            "from_number": self.from_number,
            "duration": self.duration,
            "cost": self.cost,
            "currency": self.currency,
            "created_at": iso(self.created_at),
        }

    def view(self, now: float) -> dict[str, Any]:
        """The `GET /calls/{call_id}` body."""
        duration = self.elapsed(now)
        if self.active and self.answered_at is not None:
            minutes = billable_minutes(duration)
        else:
            minutes = self.minutes_charged
        answered = self.answered_at is not None
        return {
            **self.summary(),
            "duration": duration,
            "estimated_cost": {
                "minutes": minutes,
                "amount": round(minutes * self.rate, 4),
                "currency": self.currency,
            },
            "quality_metrics": {
                "mos_score": 4.3 if answered else None,
                "latency_ms": 85 if answered else None,
                # 1 %: a good line (the guide's limit is 5 %; 0.1 made every call breach it)
                "packet_loss": 0.01 if answered else None,
                **(self.quality if answered else {}),
            },
            "answered_at": iso(self.answered_at) if self.answered_at is not None else None,
            "ended_at": iso(self.ended_at) if self.ended_at is not None else None,
            "reason": self.reason,
            "on_hold": self.on_hold,
            "transferred_to": self.transferred_to,
            "metadata": self.metadata,
        }
