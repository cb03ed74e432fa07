"""What a campaign and a contact are, validated: the settings of one campaign, the
contacts CSV (E.164 by libphonenumber, bad rows reported by line, duplicates once) and
the do-not-call file."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ringez_worker.agents.callbacks.models import field_errors, to_e164

__all__ = [
    "CampaignConfig",
    "Contact",
    "ContactsFile",
    "field_errors",
    "parse_contacts",
    "parse_dnc",
    "parse_duration",
    "phone_of",
]

_WINDOW = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h)?$")
_CONTACT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_CONTACTS = 100_000


def parse_duration(value: str) -> float:
    """`30m`, `90s`, `2h` or plain seconds; ValueError otherwise."""
    found = _DURATION.match(value.strip())
    if not found:
        raise ValueError(f"{value!r} is not a duration such as 90s, 30m or 2h")
    return float(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[found.group(2) or "s"]


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


class CampaignConfig(BaseModel):
    """One campaign's settings (`campaign create` flags; the Python API's `config`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200)
    message: str = Field(min_length=1, max_length=5000)
    voice: str = Field("en-US-Neural2-A", min_length=1, max_length=100)
    budget: float = Field(100.0, gt=0)
    currency: Literal["USD", "INR"] = "USD"
    max_concurrent: int = Field(10, ge=1, le=1000)
    calls_per_minute: int = Field(0, ge=0, le=10_000)  # 0: no per-minute limit
    retries: int = Field(2, ge=0, le=20)
    retry_after_seconds: float = Field(1800.0, ge=0)
    window: str | None = None  # "HH:MM-HH:MM" in each contact's time zone; None: any time
    timezone: str = "UTC"  # contacts without a time zone of their own
    ring_timeout: int = Field(30, ge=1, le=600)
    max_duration: int = Field(120, ge=10, le=3600)  # the longest an answered call may last
    num_digits: int = Field(1, ge=1, le=10)
    input_timeout: int = Field(10, ge=1, le=120)
    opt_out_digit: str | None = "9"
    from_number: str | None = None
    region: str = Field("US", min_length=2, max_length=2)  # for numbers written without +

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        found = _WINDOW.match(value.strip())
        if not found or found.group(1, 2) == found.group(3, 4):
            raise ValueError("must be HH:MM-HH:MM, e.g. 09:00-18:00")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return _zone(value)

    @field_validator("opt_out_digit")
    @classmethod
    def _digit(cls, value: str | None) -> str | None:
        if value is not None and value != "" and not re.fullmatch(r"[0-9*#]", value):
            raise ValueError("must be one of 0-9, * or #")
        return value or None

    @field_validator("from_number", mode="before")
    @classmethod
    def _from(cls, value: object) -> str | None:
        return None if value in (None, "") else to_e164(value)

    @model_validator(mode="after")
    def _region(self) -> CampaignConfig:
        self.region = self.region.upper()
        return self

    @property
    def max_attempts(self) -> int:
        return 1 + self.retries

    @property
    def max_minutes(self) -> int:
        """Billable minutes an answered call may reach (every started minute is billed)."""
        return -(-self.max_duration // 60)


@dataclass(frozen=True, slots=True)
class Contact:
    id: str
    phone: str  # E.164
    line: int
    name: str = ""
    timezone: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ContactsFile:
    """A parsed contacts CSV: the contacts to call, and every row not taken, by line."""

    contacts: list[Contact] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, first line)
    do_not_call: list[int] = field(default_factory=list)  # lines left out for the DNC list

    def problems(self) -> list[str]:
        """One line per row not taken, in file order: what the user is shown."""
        found = [(line, why) for line, why in self.rejected]
        found += [
            (line, f"same number as line {first}, called once") for line, first in self.duplicates
        ]
        found += [(line, "on the do-not-call list, not called") for line in self.do_not_call]
        return [f"line {line}: {why}" for line, why in sorted(found)]


def phone_of(value: str, region: str) -> str:
    """A number from a file as E.164: `+` form, or national form for `region`."""
    value = value.strip()
    if value.startswith("+") or value.startswith("00"):
        return to_e164("+" + value[2:] if value.startswith("00") else value)
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        raise ValueError("is not a phone number") from None
    return to_e164(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _rows(reader: csv.DictReader[str]) -> Any:
    """The reader's rows; a row the csv module cannot read (a NUL byte) is a ValueError
    naming its line, not a crash."""
    try:
        yield from reader
    except csv.Error as exc:
        raise ValueError(f"line {reader.line_num}: {exc}") from None


def parse_contacts(
    text: str, *, region: str = "US", do_not_call: frozenset[str] = frozenset()
) -> ContactsFile:
    """The contacts CSV: a `phone` column (required); `id`, `name`, `timezone`; any other
    column is kept as metadata. A bad row is reported by line and left out, never raised;
    the same number twice is called once; a number on `do_not_call` is left out."""
    result = ContactsFile()
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "phone" not in columns:
        raise ValueError("the contacts file has no 'phone' column (line 1 must name the columns)")
    reader.fieldnames = columns
    seen_phones: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    for row in _rows(reader):
        line = reader.line_num
        if len(result.contacts) >= MAX_CONTACTS:
            result.rejected.append((line, f"more than {MAX_CONTACTS} contacts"))
            continue
        if None in row:  # more cells than columns
            result.rejected.append((line, "more cells than the header has columns"))
            continue
        cells = {k: (v or "").strip() for k, v in row.items() if k}
        if not any(cells.values()):
            continue  # a blank line
        try:
            phone = phone_of(cells.get("phone", ""), region)
        except ValueError as exc:
            result.rejected.append((line, f"phone {exc}"))
            continue
        contact_id = cells.get("id") or f"line{line}"
        if not _CONTACT_ID.match(contact_id):
            result.rejected.append((line, "id must be 1-64 of A-Z a-z 0-9 _ . -"))
            continue
        tz = cells.get("timezone", "")
        if tz:
            try:
                _zone(tz)
            except ValueError as exc:
                result.rejected.append((line, f"timezone: {exc}"))
                continue
        if phone in seen_phones:
            result.duplicates.append((line, seen_phones[phone]))
            continue
        if contact_id in seen_ids:
            result.rejected.append(
                (line, f"id {contact_id} already used on line {seen_ids[contact_id]}")
            )
            continue
        if phone in do_not_call:
            result.do_not_call.append(line)
            continue
        seen_phones[phone] = line
        seen_ids[contact_id] = line
        extra = {k: v for k, v in cells.items() if k not in ("phone", "id", "name", "timezone")}
        result.contacts.append(Contact(contact_id, phone, line, cells.get("name", ""), tz, extra))
    return result


def parse_dnc(text: str, *, region: str = "US") -> tuple[frozenset[str], list[str]]:
    """A do-not-call file: one number a line (or a CSV with a `phone` column); (numbers,
    problems by line). A line that is no number is reported, not fatal."""
    numbers: set[str] = set()
    problems: list[str] = []
    lines = text.lstrip("\ufeff").splitlines()
    has_header = bool(lines) and "phone" in [c.strip().lower() for c in lines[0].split(",")]
    if has_header:
        reader = csv.DictReader(io.StringIO("\n".join(lines)))
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
        rows: list[tuple[int, str]] = [(reader.line_num, (r.get("phone") or "")) for r in reader]
    else:
        rows = [(n, value.split(",")[0]) for n, value in enumerate(lines, 1)]
    for line, value in rows:
        if not value.strip() or value.strip().startswith("#"):
            continue
        try:
            numbers.add(phone_of(value, region))
        except ValueError as exc:
            problems.append(f"do-not-call line {line}: phone {exc}")
    return frozenset(numbers), problems


def describe(config: CampaignConfig) -> dict[str, Any]:
    """The settings as stored and shown (no secrets live here)."""
    return config.model_dump()
