"""Pydantic models of the Ringez API's request and response bodies (see ringez-api.md).

Responses tolerate fields the contract does not list (`extra="allow"`) and treat every
field except the resource's own id as optional, because the contract is loose about which
ones are always sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RingezModel(BaseModel):
    """Base of every model: unknown fields kept, not rejected."""

    model_config = ConfigDict(extra="allow")


# Shared pieces.


class Balance(RingezModel):
    minutes: float | None = None
    currency: str | None = None
    value: float | None = None


class RateLimits(RingezModel):
    calls_per_hour: int | None = None
    max_call_duration: int | None = None


class Money(RingezModel):
    minutes: float | None = None
    amount: float | None = None
    currency: str | None = None


class QualityMetrics(RingezModel):
    mos_score: float | None = None
    latency_ms: float | None = None
    packet_loss: float | None = None


# Request bodies that callers may build as models instead of dicts.


class UserConsent(RingezModel):
    calling_authorized: bool | None = None
    privacy_mode: bool | None = None
    currency: str | None = None
    max_spend_limit: float | None = None


class CallSettings(RingezModel):
    max_duration: int | None = None
    record_call: bool | None = None
    transcribe: bool | None = None
    language: str | None = None


class BatchCall(RingezModel):
    to_number: str
    metadata: dict[str, Any] | None = None


# Sessions.


class SessionCreated(RingezModel):
    session_id: str
    session_token: str | None = None
    expires_at: str | None = None
    wallet_balance: Balance | None = None
    rate_limits: RateLimits | None = None

    @property
    def id(self) -> str:
        return self.session_id


class Session(RingezModel):
    session_id: str
    active: bool | None = None
    created_at: str | None = None
    wallet_balance: Balance | None = None
    calls_made: int | None = None
    total_duration: float | None = None

    @property
    def id(self) -> str:
        return self.session_id


class SessionClosed(RingezModel):
    success: bool | None = None
    message: str | None = None
    final_balance: Balance | None = None


# Wallet.


class CreditsAdded(RingezModel):
    transaction_id: str
    status: str | None = None
    minutes_added: float | None = None
    new_balance: Balance | None = None
    payment_receipt_url: str | None = None


class WalletBalance(RingezModel):
    balance: Balance | None = None
    last_transaction: dict[str, Any] | None = None


# Calls.


class CallInitiated(RingezModel):
    call_id: str
    status: str | None = None
    to_number: str | None = None
    from_number: str | None = None
    estimated_rate: float | None = None
    currency: str | None = None
    created_at: str | None = None

    @property
    def id(self) -> str:
        return self.call_id


class CallStatus(RingezModel):
    call_id: str
    status: str | None = None
    duration: float | None = None
    estimated_cost: Money | None = None
    quality_metrics: QualityMetrics | None = None

    @property
    def id(self) -> str:
        return self.call_id


class CallActionResult(RingezModel):
    call_id: str | None = None
    action: str | None = None
    status: str | None = None
    timestamp: str | None = None


class InputCollected(CallActionResult):
    """The guide's `calls.collect_input` answer: the digits pressed, None on a timeout."""

    digits: str | None = None


class IssueReported(RingezModel):
    issue_id: str | None = None
    status: str | None = None


class CallEnded(RingezModel):
    call_id: str | None = None
    status: str | None = None
    duration: float | None = None
    cost: float | Money | None = None
    remaining_balance: float | Balance | None = None
    ended_at: str | None = None


class Pagination(RingezModel):
    total: int | None = None
    limit: int | None = None
    offset: int | None = None
    has_more: bool | None = None


class CallHistory(RingezModel):
    calls: list[dict[str, Any]] = []
    pagination: Pagination | None = None


class BatchCallResult(RingezModel):
    call_id: str | None = None
    to_number: str | None = None
    status: str | None = None


class BatchCalls(RingezModel):
    batch_id: str
    calls: list[BatchCallResult] = []


# Transcription.


class TranscriptionStarted(RingezModel):
    transcription_id: str | None = None
    websocket_url: str | None = None


class TranscriptSegment(RingezModel):
    speaker: str | None = None
    text: str = ""
    timestamp: float | None = None
    confidence: float | None = None


class Transcript(RingezModel):
    transcript: list[TranscriptSegment] = []
    language: str | None = None
    duration: float | None = None

    @property
    def segments(self) -> list[TranscriptSegment]:
        """The guide's name for `transcript`."""
        return self.transcript


# AI helpers.


class IntentDetection(RingezModel):
    intent: str | None = None
    sub_intent: str | None = None
    entities: Any = None
    confidence: float | None = None
    suggested_action: str | dict[str, Any] | None = None
    suggested_parameters: dict[str, Any] | None = None


class CallRouting(RingezModel):
    route_to: str | None = None
    route_type: str | None = None
    estimated_wait_time: float | None = None
    agent_available: bool | None = None
    fallback_options: list[Any] = []


class SentimentAnalysis(RingezModel):
    sentiment: str | None = None
    sentiment_score: float | None = None
    emotion: str | dict[str, Any] | None = None
    urgency: str | float | None = None
    escalation_recommended: bool | None = None
    key_phrases: list[Any] = []
    suggested_actions: list[Any] = []


class VoiceSynthesis(RingezModel):
    audio_id: str | None = None
    audio_url: str | None = None
    duration: float | None = None


# Analytics.


class CallMetricsSummary(RingezModel):
    total_calls: int | None = None
    total_duration: float | None = None
    total_cost: float | None = None
    average_duration: float | None = None
    success_rate: float | None = None


class CallMetricsQuery(RingezModel):
    """The query of `GET /analytics/call-metrics`; dates are ISO 8601 (UTC `Z`) or YYYY-MM-DD."""

    session_id: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    group_by: Literal["day", "status", "hour"] | None = None


class HourMetrics(RingezModel):
    """One entry of `breakdown.by_hour[]`: `hour` is the hour's start, ISO 8601 in UTC."""

    hour: str
    total_calls: int = 0
    total_duration: float | None = None
    total_cost: float | None = None
    completed: int | None = None
    failed: int | None = None
    busy: int | None = None
    no_answer: int | None = Field(None, alias="no-answer")
    campaign_calls: int | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class CallMetricsBreakdown(RingezModel):
    by_hour: list[HourMetrics] = []


class CallMetrics(RingezModel):
    metrics: CallMetricsSummary | None = None
    # `group_by: "hour"` answers {by_hour: [...]}; day and status answer a list of groups.
    breakdown: CallMetricsBreakdown | list[Any] | None = None

    @property
    def by_hour(self) -> list[HourMetrics]:
        """The hourly entries, or [] when the answer was not grouped by hour."""
        return self.breakdown.by_hour if isinstance(self.breakdown, CallMetricsBreakdown) else []


class SpendingPeriod(RingezModel):
    total_spent: float | None = None
    budget_limit: float | None = None
    budget_remaining: float | None = None


class Spending(RingezModel):
    current_period: SpendingPeriod | None = None
    predictions: Any = None


# Webhooks.


class WebhookSubscription(RingezModel):
    webhook_id: str
    status: str | None = None
