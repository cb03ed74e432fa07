"""What a callback request and a roster agent are, validated; and the guide's priority."""

from __future__ import annotations

from typing import Any, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Urgency = Literal["low", "normal", "high"]


def to_e164(value: object) -> str:
    """`value` as an E.164 number, valid by libphonenumber's rules; ValueError otherwise."""
    if not isinstance(value, str) or not value.startswith("+"):
        raise ValueError("must be an E.164 number such as +14155550100")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError("must be an E.164 number such as +14155550100") from None
    # The sandbox's +1500555xxxx numbers are not assignable, so possible (length and
    # country code) is what is checked, not is_valid_number (which would refuse them).
    if not phonenumbers.is_possible_number(number):
        raise ValueError("is not a possible phone number for its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class CallbackRequest(BaseModel):
    """A customer asking to be called back (POST /callbacks, `callbacks add`)."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=200)
    phone: str
    urgency: Urgency = "normal"
    skill: str = Field("general", min_length=1, max_length=100)
    language: str = Field("en", min_length=1, max_length=20)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("phone", mode="before")
    @classmethod
    def _phone(cls, value: object) -> str:
        return to_e164(value)


class RosterAgent(BaseModel):
    """One human agent: who to ring, what they can handle, how many calls at once."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    number: str
    skills: list[str] = Field(default_factory=lambda: ["general"])
    languages: list[str] = Field(default_factory=lambda: ["en"])
    max_concurrent: int = Field(1, ge=1, le=100)
    available: bool = True

    @field_validator("number", mode="before")
    @classmethod
    def _number(cls, value: object) -> str:
        return to_e164(value)


def field_errors(exc: ValidationError) -> dict[str, str]:
    """Per-field messages for a 422 (never the submitted values: they may be personal)."""
    errors: dict[str, str] = {}
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "body"
        errors.setdefault(name, str(error["msg"]).removeprefix("Value error, "))
    return errors


def priority(request: CallbackRequest, tier: str | None, pending_issues: int) -> int:
    """The guide's score: VIP tier +50, high urgency +30, pending issues +20."""
    score = 0
    if (tier or "").lower() == "vip":
        score += 50
    if request.urgency == "high":
        score += 30
    if pending_issues > 0:
        score += 20
    return score


def customer_info_from_metadata(request: CallbackRequest) -> dict[str, Any]:
    """The default customer-info hook: tier and pending issues from the request's metadata."""
    meta = request.metadata
    pending = meta.get("pending_issues", 0)
    return {
        "tier": meta.get("tier"),
        "pending_issues": pending if isinstance(pending, int) and pending > 0 else 0,
    }
