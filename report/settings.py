"""REPORT_* settings, validated at start-up with one line naming the variable (never its value)."""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ringez_worker.settings import SettingsError

MISSING_MATPLOTLIB = (
    "the report needs matplotlib, which is not installed: pip install 'ringez-agent-worker[report]'"
)


class ReportSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Five-field cron (m h dom mon dow) in REPORT_TIMEZONE; unset: no scheduled report.
    report_cron: str | None = None
    # Which day a scheduled report covers: the one before the scheduled time, or its own.
    report_day: Literal["previous", "current"] = "previous"
    report_timezone: str = "UTC"
    # Reports kept in Redis, newest first; one larger than REPORT_MAX_BYTES is not kept.
    report_keep: int = Field(14, ge=1, le=1000)
    report_max_bytes: int = Field(2 * 1024 * 1024, ge=64 * 1024)
    # Only this session's calls, or every session's when unset.
    report_session_id: str | None = None

    @field_validator("report_cron", "report_session_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("report_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from croniter import croniter

        fields = value.split()
        if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
            raise ValueError("must be a five-field cron expression: minute hour dom month dow")
        return " ".join(fields)

    @field_validator("report_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as UTC or Europe/Berlin") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.report_timezone)


def load_report_settings(**overrides: object) -> ReportSettings:
    """ReportSettings, or a SettingsError of one line per bad variable."""
    try:
        return ReportSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
        raise SettingsError("invalid configuration: " + "; ".join(lines)) from None


def require_matplotlib() -> None:
    """Fail with one clear line when the optional [report] extra is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SettingsError(MISSING_MATPLOTLIB) from None
