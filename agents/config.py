"""Settings of the built-in agents: each can be switched off and tuned from the environment."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ringez_worker.agents.phone import is_e164
from ringez_worker.logs import register_secrets
from ringez_worker.settings import settings_error

# Campaigns are on by default: with no campaign started they cost nothing (no API request,
# no scheduled job; one Redis GET per call event for the call map). README "Campaigns".
ALL_AGENTS = ("support", "escalation", "recharge", "campaigns")
# Opt-in: the quality monitor polls every answered call (API budget); the callback queue
# needs a roster and a session.
# AGENTS_ENABLED=support,escalation,recharge,campaigns,quality,callbacks.
OPTIONAL_AGENTS = ("quality", "callbacks")
KNOWN_AGENTS = ALL_AGENTS + OPTIONAL_AGENTS


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Comma-separated subset of support, escalation, recharge, campaigns (and the optional
    # ones); empty turns them all off.
    agents_enabled: str = ",".join(ALL_AGENTS)

    # Support agent.
    support_context_segments: int = Field(10, ge=1, le=200)
    support_state_ttl_seconds: int = Field(4 * 3600, ge=60)
    support_escalation_intents: str = "escalation_request"
    summary_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)

    # Escalation agent.
    escalation_sentiment_threshold: float = Field(-0.6, ge=-1, le=1)
    escalation_department: str = "support"
    escalation_skill: str = "general"
    escalation_priority: str = "high"
    escalation_default_number: str | None = None
    escalation_claim_ttl_seconds: int = Field(24 * 3600, ge=60)

    # Low-balance recharge agent.
    recharge_threshold_minutes: float = Field(10.0, ge=0)
    recharge_plan: str = "starter"
    recharge_payment_method: str = "stripe"
    recharge_payment_token: SecretStr | None = None
    recharge_currency: str = "USD"
    recharge_amount: float = Field(10.0, gt=0)
    recharge_daily_max_count: int = Field(3, ge=0)
    recharge_daily_max_amount: float = Field(100.0, ge=0)
    recharge_dry_run: bool = False
    recharge_lock_seconds: float = Field(30.0, gt=0)
    # How long after a charge a balance read may still miss it (a replica or cache behind
    # the wallet): meanwhile the charge's own new_balance counts, not a lower read.
    recharge_settle_seconds: float = Field(600.0, ge=0)
    # How long each charge's record is kept for the daily report.
    recharge_record_ttl_seconds: int = Field(35 * 24 * 3600, ge=3600)
    # Call quality monitor (agents/quality.py, issue 17).
    quality_poll_seconds: float = Field(5.0, gt=0)
    quality_mos_warn: float = Field(3.5, ge=0, le=5)
    quality_mos_critical: float = Field(2.5, ge=0, le=5)
    quality_packet_loss_max: float = Field(0.05, ge=0, le=1)
    quality_latency_max_ms: float = Field(300.0, ge=0)
    quality_budget_floor: float = Field(0.20, ge=0, le=1)
    quality_record_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    # Callback queue (agents/callbacks/, issue 16).
    callback_session_id: str | None = None
    callback_roster: str | None = None
    callback_retry_after_seconds: float = Field(60.0, ge=0)
    callback_max_tries: int = Field(3, ge=1, le=20)
    callback_unservable_seconds: float = Field(600.0, ge=0)
    callback_sweep_seconds: float = Field(15.0, gt=0)
    # An assignment with no call this long after its dial was claimed is dialed again
    # (its worker died mid-dial); longer than one API request with its retries.
    callback_dial_stale_seconds: float = Field(30.0, gt=0)
    callback_record_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    # module:function returning {"tier": ..., "pending_issues": n} for a request (may be
    # async); unset: both read from the request's metadata.
    callback_customer_info: str | None = None
    # Outbound campaigns (agents/campaign/, issue 15); each campaign's own limits are its
    # `campaign create` flags.
    # Per-minute rate a campaign's first reservation assumes, before a dial's
    # estimated_rate is known.
    campaign_rate_estimate: float = Field(0.05, gt=0)
    # While calls are live: how often a pass looks for lost webhooks and crashed dials.
    campaign_sweep_seconds: float = Field(30.0, gt=0)
    # How long past its ring timeout and max duration a call may go unreported before a
    # sweep asks Ringez how it ended (a lost call.completed would hold its slot forever).
    campaign_lost_call_grace_seconds: float = Field(60.0, ge=0)
    # How long an ended campaign (its contacts and results) is kept for export.
    campaign_record_ttl_seconds: int = Field(30 * 24 * 3600, ge=60)

    @field_validator("agents_enabled")
    @classmethod
    def _known_agents(cls, value: str) -> str:
        unknown = {a.strip() for a in value.split(",") if a.strip()} - set(KNOWN_AGENTS)
        if unknown:
            # The unknown names are not echoed: start-up errors never show a value.
            raise ValueError(f"unknown agent name; choose from {', '.join(KNOWN_AGENTS)}")
        return value

    @field_validator("escalation_default_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and value.strip() == "":
            return None
        if value is not None and not is_e164(value):
            raise ValueError("must be an E.164 number such as +14155550100")
        return value

    @field_validator("recharge_payment_method")
    @classmethod
    def _payment_method(cls, value: str) -> str:
        if value not in ("paypal", "cashfree", "stripe"):
            raise ValueError("must be paypal, cashfree or stripe")
        return value

    @field_validator("recharge_plan")
    @classmethod
    def _plan(cls, value: str) -> str:
        if value not in ("starter", "popular", "best_value"):
            raise ValueError("must be starter, popular or best_value")
        return value

    def enabled(self, agent: str) -> bool:
        return agent in {a.strip() for a in self.agents_enabled.split(",")}

    @property
    def escalation_intents(self) -> frozenset[str]:
        return frozenset(i.strip() for i in self.support_escalation_intents.split(",") if i.strip())

    def model_post_init(self, context: object, /) -> None:
        register_secrets(self.secret_values())  # the process's one redactor knows them all

    def secret_values(self) -> list[str]:
        token = self.recharge_payment_token
        return [token.get_secret_value()] if token and len(token.get_secret_value()) >= 4 else []


def load_agent_settings(**overrides: object) -> AgentSettings:
    """AgentSettings from the environment; a bad value is a SettingsError naming the
    variable, never its value (like `load_settings`)."""
    try:
        return AgentSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise settings_error(exc) from None
