"""Configuration from the environment and `.env`, validated once at start-up."""

from __future__ import annotations

import logging
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ringez_worker.logs import register_secrets
from ringez_worker.redis_url import PLAIN_SCHEMES, is_sentinel_url, parse_sentinel_url, url_password


class SettingsError(Exception):
    """Configuration is missing or malformed; the message never contains a value."""


class Settings(BaseSettings):
    """Everything the receiver and the worker read from the environment."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Redis: the queue, the dedupe records and the per-delivery state.
    redis_url: str = "redis://localhost:6379/0"
    redis_timeout_seconds: float = Field(2.0, gt=0)
    redis_max_connections: int = Field(16, ge=2)
    # >0 with replicas (Sentinel): answer a webhook only once this many replicas have it.
    redis_wait_replicas: int = Field(0, ge=0)
    redis_wait_timeout_ms: int = Field(1000, ge=1)

    # Ringez.
    ringez_webhook_secret: SecretStr | None = None
    ringez_api_url: str = "https://ringez-api.vercel.app/api/v1"
    ringez_api_key: SecretStr | None = None
    ringez_agent_id: str = "ringez-agent-worker"
    # The account's API budget, shared by every worker through Redis (standard tier: 1000/h).
    ringez_rate_limit: int = Field(1000, ge=1)
    ringez_rate_period_seconds: float = Field(3600.0, gt=0)
    # The last part of the budget only live-call actions may take (api/priority.py).
    ringez_rate_reserve_live: float = Field(0.10, ge=0, lt=0.5)
    ringez_timeout_seconds: float = Field(10.0, gt=0)
    # A delivery the API keeps rate-limiting is deferred by each Retry-After (not counted
    # as a try) up to this much in total, then recorded as failed. At most a day: arq's own
    # per-job try counter lives about that long.
    rate_limit_max_defer_seconds: float = Field(6 * 3600, ge=0, le=86400)
    # The largest API answer read; a larger one fails the request (ResponseTooLarge).
    ringez_max_response_bytes: int = Field(4 * 1024 * 1024, ge=1024)

    # Receiver.
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    webhook_path: str = "/webhooks/ringez"
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    dedupe_window_seconds: int = Field(72 * 3600, ge=60)
    clock_skew_seconds: int = Field(300, ge=0)
    body_read_timeout_seconds: float = Field(10.0, gt=0)
    retry_after_seconds: int = Field(5, ge=1)

    # Queue and worker.
    queue_name: str = "ringez:queue"
    key_prefix: str = "rz"
    job_max_tries: int = Field(5, ge=1)
    retry_backoff_seconds: float = Field(1.0, ge=0)
    retry_backoff_max_seconds: float = Field(300.0, ge=0)
    worker_max_jobs: int = Field(100, ge=1)
    worker_poll_delay_seconds: float = Field(0.05, gt=0)
    # Longest one handler may run before it counts as failed (and is retried).
    job_timeout_seconds: float = Field(60.0, gt=0)
    # How long a killed worker's job stays claimed before another worker takes it.
    job_lease_seconds: float = Field(15.0, ge=0.3)
    shutdown_grace_seconds: float = Field(25.0, ge=0)
    handler_state_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    # A delivery's per-handler completion record only guards re-runs of its job (a crash,
    # a retry): kept this long while all goes well, HANDLER_STATE_TTL_SECONDS once the
    # delivery is retried or fails (so a replay still skips what succeeded).
    done_record_ttl_seconds: int = Field(3600, ge=60)
    # A worker's presence record (`ringez-worker status`) lives this long, refreshed every
    # quarter of it whether or not the worker has a free slot.
    worker_presence_ttl_seconds: float = Field(20.0, ge=0.4)
    # The worker's own HTTP port for /healthz, /readyz and /metrics (0 turns it off).
    worker_metrics_port: int = Field(9100, ge=0, le=65535)

    # The console (worker/console/) and its delivery log: how long and how many entries
    # the capped stream keeps (receipts, duplicates, handler runs).
    delivery_log_retention: int = Field(24 * 3600, ge=60)
    delivery_log_max_entries: int = Field(20_000, ge=100)
    console_token: SecretStr | None = None
    console_host: str = "127.0.0.1"
    console_port: int = Field(8300, ge=0, le=65535)
    console_base_path: str = ""
    console_secure_cookie: bool = False
    # POST /callbacks on the web process (the callback queue): off while unset.
    callbacks_token: SecretStr | None = None

    # The failed-events record (worker/failed.py): a record leaves this long after its last
    # failure, and the oldest leave first beyond this many (both counted in /metrics).
    failed_retention_seconds: int = Field(7 * 24 * 3600, ge=60)
    failed_max_records: int = Field(10_000, ge=1)

    # Privacy (README "Privacy"): keep transcript text out of every stored record (the
    # handlers still get it); log phone numbers whole instead of their last four digits.
    privacy_redact_transcripts: bool = False
    log_phone_numbers: bool = False

    # Extension: extra handler modules, comma-separated.
    ringez_handlers: str = ""
    load_entry_points: bool = True

    # Tracing is configured by the standard OTEL_* variables (ringez_worker/tracing.py);
    # this one is ours: an incoming `traceparent` becomes the SERVER span's parent (a
    # sender you trust) instead of a link.
    tracing_trust_traceparent: bool = False

    # Logging.
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @model_validator(mode="after")
    def _wait_fits_the_socket_timeout(self) -> Settings:
        # A WAIT outlasting the socket timeout would read as a dead connection and be
        # sent again, instead of answering 503 once.
        if self.redis_wait_replicas and self.redis_wait_timeout_ms >= (
            self.redis_timeout_seconds * 1000
        ):
            raise ValueError("REDIS_WAIT_TIMEOUT_MS must be below REDIS_TIMEOUT_SECONDS")
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if is_sentinel_url(value):
            parse_sentinel_url(value)  # raises a ValueError saying what is wrong
        elif value.split("://", 1)[0] not in PLAIN_SCHEMES:
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        else:
            # A bad port would otherwise pass here and fail at the first connection.
            try:
                _ = urlsplit(value).port
            except ValueError:
                raise ValueError("must be a valid URL, its port a number from 0 to 65535") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in logging.getLevelNamesMapping():
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()

    @field_validator("ringez_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("webhook_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator("console_base_path")
    @classmethod
    def _base_path(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator(
        "ringez_webhook_secret", "ringez_api_key", "console_token", "callbacks_token", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def model_post_init(self, context: object, /) -> None:
        register_secrets(self.secret_values())

    @property
    def webhook_secrets(self) -> list[bytes]:
        """Every configured webhook secret (comma-separated for rotation)."""
        if self.ringez_webhook_secret is None:
            return []
        raw = self.ringez_webhook_secret.get_secret_value()
        return [part.strip().encode() for part in raw.split(",") if part.strip()]

    @property
    def handler_modules(self) -> list[str]:
        return [m.strip() for m in self.ringez_handlers.split(",") if m.strip()]

    def secret_values(self) -> list[str]:
        """Secret strings that log and error output must never contain."""
        values = [s.decode() for s in self.webhook_secrets]
        if self.ringez_api_key is not None:
            values.append(self.ringez_api_key.get_secret_value())
        if self.ringez_webhook_secret is not None:
            values.append(self.ringez_webhook_secret.get_secret_value())
        for token in (self.console_token, self.callbacks_token):
            if token is not None:
                values.append(token.get_secret_value())
        # The password inside a redis URL is a secret too.
        password = url_password(self.redis_url)
        if password:
            values.append(password)
        return [v for v in values if len(v) >= 4]


def settings_error(exc: ValidationError) -> SettingsError:
    """One line naming each bad variable and why, never its value."""
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in err["loc"]).upper() or "settings"
        problems.append(f"{field}: {err['msg']}")
    return SettingsError("invalid configuration: " + "; ".join(problems))


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation errors into a message that names fields, not values."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise settings_error(exc) from None


def require(settings: Settings, *names: str) -> None:
    """Fail with a clear message when a setting a command needs is not set."""
    missing = [n.upper() for n in names if getattr(settings, n) in (None, "")]
    if missing:
        raise SettingsError("missing required configuration: " + ", ".join(missing))
