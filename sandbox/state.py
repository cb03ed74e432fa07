"""The sandbox's in-memory Ringez: sessions, wallets, calls and credit transactions.

No method here awaits, so a check-then-store (idempotency keys, balances) can never
interleave with another request on the event loop.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from ringez_worker.sandbox.config import SandboxConfig
from ringez_worker.sandbox.models import (
    Call,
    SandboxError,
    Session,
    Transaction,
    Wallet,
    billable_minutes,
    check_e164,
    iso,
    new_id,
)

SESSION_TYPES = frozenset({"guest", "authenticated"})
PAYMENT_METHODS = frozenset({"paypal", "cashfree", "stripe"})
DECLINED_TOKEN = "tok_declined"
DTMF = re.compile(r"^[0-9*#wW]{1,64}$")
# The call actions the sandbox runs (ringez-api.md; switch_codec, play and collect as the
# guide shows them).
CALL_ACTIONS = ("dtmf", "hold", "unhold", "transfer", "hangup", "switch_codec", "play", "collect")


def pressed_digits(number: str, num_digits: int = 1) -> str | None:
    """What the person at `number` presses when asked (the `collect` action): the number's
    last digit, `num_digits` times; a number ending in 0 presses nothing (a timeout)."""
    last = number[-1:]
    if not last.isdigit() or last == "0":
        return None
    return last * max(1, min(num_digits, 10))


class SandboxState:
    """Every session, wallet, call and transaction of one sandbox."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.sessions: dict[str, Session] = {}
        self.calls: dict[str, Call] = {}
        self.transactions: dict[str, Transaction] = {}
        self._credit_keys: dict[str, Transaction] = {}
        # (session_id, key) -> (first seen, request fingerprint, call_id)
        self._call_keys: dict[tuple[str, str], tuple[float, tuple[Any, ...], str]] = {}

    def now(self) -> float:
        return self.config.clock()

    # Sessions and wallets.

    def create_session(
        self,
        session_type: str = "guest",
        *,
        agent_context: dict[str, Any] | None = None,
        consent: dict[str, Any] | None = None,
        initial_minutes: float | None = None,
    ) -> Session:
        """Open a session with a fresh wallet in the consented currency."""
        if not isinstance(session_type, str) or session_type not in SESSION_TYPES:
            raise SandboxError(
                400, "invalid_session_type", "session_type must be guest or authenticated"
            )
        consent = dict(consent or {})
        currency = consent.get("currency") or "USD"
        if not isinstance(currency, str) or currency not in self.config.rates:
            raise SandboxError(
                400, "invalid_currency", f"currency must be one of {sorted(self.config.rates)}"
            )
        limit = consent.get("max_spend_limit")
        if limit is not None and (not isinstance(limit, int | float) or limit < 0):
            raise SandboxError(
                400, "invalid_spend_limit", "max_spend_limit must be a positive number"
            )
        now = self.now()
        minutes = self.config.initial_minutes if initial_minutes is None else initial_minutes
        session = Session(
            session_id=new_id("sess"),
            session_type=session_type,
            token=new_id("stok"),
            created_at=now,
            expires_at=now + 24 * 3600,
            wallet=Wallet(
                minutes=float(minutes), currency=currency, rate=self.config.rates[currency]
            ),
            agent_context=dict(agent_context or {}),
            consent=consent,
            max_spend_limit=float(limit) if limit is not None else None,
        )
        self.sessions[session.session_id] = session
        return session

    def get_session(self, session_id: object) -> Session:
        if not isinstance(session_id, str) or session_id not in self.sessions:
            raise SandboxError(404, "session_not_found", "no session with that session_id")
        return self.sessions[session_id]

    def close_session(self, session_id: str) -> tuple[Session, list[Call]]:
        """Deactivate a session, hanging up its live calls; closing twice is harmless."""
        session = self.get_session(session_id)
        session.active = False
        ended = [
            self.complete_call(c)
            for c in self.calls.values()
            if c.session_id == session_id and c.active
        ]
        return session, ended

    def add_credits(
        self,
        session_id: object,
        *,
        payment_method: object,
        plan: object = None,
        currency: object = None,
        amount: object = None,
        payment_token: object = None,
        idempotency_key: object = None,
    ) -> tuple[Transaction, bool]:
        """Credit a wallet once per idempotency key; return (transaction, replayed)."""
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not idempotency_key:
                raise SandboxError(
                    400, "invalid_idempotency_key", "idempotency_key must be a string"
                )
            seen = self._credit_keys.get(idempotency_key)
            if seen is not None:
                if seen.session_id != session_id:
                    raise SandboxError(
                        409,
                        "idempotency_key_reused",
                        "idempotency_key was used for another session",
                    )
                return seen, True
        session = self.get_session(session_id)
        if not isinstance(payment_method, str) or payment_method not in PAYMENT_METHODS:
            raise SandboxError(
                400,
                "invalid_payment_method",
                f"payment_method must be one of {sorted(PAYMENT_METHODS)}",
            )
        wallet = session.wallet
        if currency is not None and currency != wallet.currency:
            raise SandboxError(400, "currency_mismatch", f"this wallet is in {wallet.currency}")
        if plan is not None:
            if not isinstance(plan, str) or plan not in self.config.plans:
                raise SandboxError(
                    400, "invalid_plan", f"plan must be one of {sorted(self.config.plans)}"
                )
            minutes = self.config.plans[plan]
            price = round(minutes * wallet.rate, 2)
        elif isinstance(amount, int | float) and not isinstance(amount, bool) and amount > 0:
            price = float(amount)
            minutes = round(price / wallet.rate, 2)
        else:
            raise SandboxError(400, "invalid_amount", "send a plan or a positive amount")
        if isinstance(payment_token, str) and payment_token.startswith(DECLINED_TOKEN):
            # Not stored under the key: a declined payment may be retried with it. The
            # token is echoed, as payment APIs do, so tests see that it never leaks on.
            raise SandboxError(
                402, "payment_declined", f"payment token {payment_token} was declined"
            )
        wallet.minutes += minutes
        now = self.now()
        tx = Transaction(
            transaction_id=new_id("txn"),
            session_id=session.session_id,
            status="completed",
            minutes_added=minutes,
            amount=price,
            currency=wallet.currency,
            payment_method=str(payment_method),
            plan=plan if isinstance(plan, str) else None,
            created_at=now,
            new_balance=wallet.view(),
        )
        self.transactions[tx.transaction_id] = tx
        session.last_transaction = tx
        if isinstance(idempotency_key, str):
            self._credit_keys[idempotency_key] = tx
        return tx, False

    def lagged_wallet(
        self, session: Session, lag_seconds: float
    ) -> tuple[dict[str, Any], Transaction | None]:
        """The wallet and last transaction as a replica `lag_seconds` behind would show them:
        credits younger than the lag are not there yet."""
        if lag_seconds <= 0:
            return session.wallet.view(), session.last_transaction
        since = self.now() - lag_seconds
        credits = [
            tx
            for tx in self.transactions.values()
            if tx.session_id == session.session_id and tx.status == "completed"
        ]
        recent = sum(tx.minutes_added for tx in credits if tx.created_at > since)
        older = [tx for tx in credits if tx.created_at <= since]
        wallet = dataclasses.replace(session.wallet, minutes=session.wallet.minutes - recent)
        return wallet.view(), max(older, key=lambda tx: tx.created_at, default=None)

    # Calls.

    def initiate_call(
        self,
        session_id: object,
        to_number: object,
        from_number: object = None,
        *,
        settings: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Call, bool]:
        """Create a call, or return the one made under this key in the window: (call, replayed)."""
        to = check_e164(to_number, "to_number")
        frm = check_e164(from_number or self.config.default_caller_id, "from_number")
        settings = dict(settings or {})
        now = self.now()
        fingerprint = (session_id, to, frm)
        if idempotency_key is not None:
            hit = self._call_keys.get((str(session_id), idempotency_key))
            if hit is not None and now - hit[0] < self.config.idempotency_window_seconds:
                if hit[1] != fingerprint:
                    raise SandboxError(
                        409, "idempotency_key_reused", "idempotency_key was used for another call"
                    )
                return self.calls[hit[2]], True
        session = self.get_session(session_id)
        if not session.active:
            raise SandboxError(403, "session_closed", "the session has been closed")
        if session.consent.get("calling_authorized") is False:
            raise SandboxError(403, "calling_not_authorized", "the user has not authorized calling")
        max_duration = settings.get("max_duration", self.config.max_call_duration)
        if (
            not isinstance(max_duration, int)
            or isinstance(max_duration, bool)
            or not 1 <= max_duration <= self.config.max_call_duration
        ):
            raise SandboxError(
                400,
                "invalid_max_duration",
                f"max_duration must be 1-{self.config.max_call_duration} s",
            )
        wallet = session.wallet
        if wallet.minutes < 1:
            raise SandboxError(402, "insufficient_balance", "the wallet has less than one minute")
        limit = session.max_spend_limit
        if limit is not None and session.total_spent + wallet.rate > limit:
            raise SandboxError(
                402, "spend_limit_reached", "the session's max_spend_limit is reached"
            )
        recent = [t for t in session.call_times if now - t < 3600]
        if len(recent) >= self.config.calls_per_hour:
            wait = max(1, math.ceil(3600 - (now - recent[0])))
            raise SandboxError(
                429, "rate_limited", "calls_per_hour reached", {"Retry-After": str(wait)}
            )
        session.call_times = [*recent, now]
        call = Call(
            call_id=new_id("call"),
            session_id=session.session_id,
            to_number=to,
            from_number=frm,
            created_at=now,
            rate=wallet.rate,
            currency=wallet.currency,
            settings={**settings, "max_duration": max_duration},
            metadata=dict(metadata or {}),
            webhook_url=webhook_url,
            language=str(settings.get("language") or "en-US"),
        )
        self.calls[call.call_id] = call
        session.calls_made += 1
        if idempotency_key is not None:
            self._call_keys[(session.session_id, idempotency_key)] = (
                now,
                fingerprint,
                call.call_id,
            )
        return call, False

    def get_call(self, call_id: object) -> Call:
        if not isinstance(call_id, str) or call_id not in self.calls:
            raise SandboxError(404, "call_not_found", "no call with that call_id")
        return self.calls[call_id]

    def ring(self, call: Call) -> None:
        if call.status == "initiated":
            call.status = "ringing"
            call.touch()

    def answer(self, call: Call) -> None:
        if call.status in ("initiated", "ringing"):
            call.status = "in-progress"
            call.answered_at = self.now()
            call.touch()

    def fail(self, call: Call, status: str, reason: str) -> None:
        """End an unanswered call as busy, no-answer or failed."""
        if call.active:
            call.status = status
            call.reason = reason
            call.ended_at = self.now()
            call.touch()

    def complete_call(self, call: Call, duration: int | None = None) -> Call:
        """Hang up and charge the wallet; `duration` overrides the clock (scenarios use it)."""
        if not call.active:
            return call
        now = self.now()
        session = self.sessions[call.session_id]
        if call.answered_at is not None:
            seconds = call.elapsed(now) if duration is None else duration
            charged = billable_minutes(seconds)
        else:
            seconds, charged = 0, 0
        wallet = session.wallet
        before = wallet.minutes
        wallet.minutes = max(0.0, wallet.minutes - charged)
        call.status = "completed"
        call.ended_at = now
        call.duration = seconds
        call.minutes_charged = charged
        call.cost = round(charged * call.rate, 4)
        session.total_duration += seconds
        session.total_spent = round(session.total_spent + call.cost, 4)
        threshold = self.config.low_balance_minutes
        if before >= threshold > wallet.minutes:
            call.balance_low = wallet.view()
        call.touch()
        return call

    def report_issue(self, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /calls/{id}/issues (the guide's reportIssue); one issue per idempotency key."""
        call = self.get_call(call_id)
        key = body.get("idempotency_key")
        for issue in call.issues:
            if key and issue.get("idempotency_key") == key:
                return {"issue_id": issue["issue_id"], "status": "open"}
        issue_id = f"iss_{call_id}_{len(call.issues) + 1}"
        call.issues.append({**body, "issue_id": issue_id, "timestamp": iso(self.now())})
        call.touch()
        return {"issue_id": issue_id, "status": "open"}

    def act(self, call_id: str, action: object, parameters: dict[str, Any]) -> dict[str, Any]:
        """Run a call action; any action on a call that is not connected is a 409."""
        call = self.get_call(call_id)
        extra: dict[str, Any] = {}
        if action not in CALL_ACTIONS:
            raise SandboxError(
                400, "invalid_action", f"action must be one of {', '.join(CALL_ACTIONS)}"
            )
        if action == "hangup" and call.active:
            self.complete_call(call)
        elif call.status != "in-progress":
            raise SandboxError(
                409,
                "call_not_active",
                f"the call is {call.status}; {action} needs a connected call",
            )
        elif action == "dtmf":
            digits = parameters.get("digits")
            if not isinstance(digits, str) or not DTMF.match(digits):
                raise SandboxError(400, "invalid_digits", "digits must be 0-9, *, # or w")
        elif action in ("hold", "unhold"):
            call.on_hold = action == "hold"
        elif action == "switch_codec":
            call.codec = str(parameters.get("codec") or "OPUS")
        elif action == "play":
            url = parameters.get("audio_url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise SandboxError(400, "invalid_audio_url", "audio_url must be an http(s) URL")
            call.played.append(url)
        elif action == "collect":
            if parameters.get("type", "dtmf") != "dtmf":
                raise SandboxError(400, "invalid_input_type", "type must be dtmf")
            num = parameters.get("num_digits", 1)
            if not isinstance(num, int) or isinstance(num, bool) or not 1 <= num <= 10:
                raise SandboxError(400, "invalid_num_digits", "num_digits must be 1-10")
            extra["digits"] = pressed_digits(call.to_number, num)
        elif action == "transfer":
            call.transferred_to = check_e164(parameters.get("transfer_to"), "transfer_to")
            call.on_hold = False
        now = self.now()
        call.actions.append({"action": action, "parameters": parameters, "timestamp": iso(now)})
        call.touch()
        return {
            "call_id": call.call_id,
            "action": action,
            "status": "executed",
            "timestamp": iso(now),
            **extra,
        }

    def add_segment(
        self, call: Call, speaker: str, text: str, confidence: float, offset: float
    ) -> dict[str, Any]:
        segment = {"speaker": speaker, "text": text, "timestamp": offset, "confidence": confidence}
        call.transcript.append(segment)
        call.touch()
        return segment

    def history(
        self, session_id: str | None, status: str | None, limit: int, offset: int
    ) -> tuple[list[Call], int]:
        """A page of calls, newest first."""
        calls = [
            c
            for c in self.calls.values()
            if (session_id is None or c.session_id == session_id)
            and (status is None or c.status == status)
        ]
        calls.sort(key=lambda c: c.created_at, reverse=True)
        return calls[offset : offset + limit], len(calls)
