"""The receiver's checks with no I/O (like gidgethub's `sansio`): headers, raw body,
secrets, the time and the limits in; a verified, parsed delivery or a `Rejected` out.

`check` is the whole decision. The aiohttp handler calls its two halves, so that the
header checks answer before the body is read (a request without a signature costs no
read) and nothing is checked twice: `check_headers`, read the body, `check_body`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from ringez_worker import signature
from ringez_worker.worker import envelope
from ringez_worker.worker.envelope import Envelope

# The error a rejected request answers with: `status`, `code` and `message`.
Rejected = envelope.EnvelopeError


@dataclass(frozen=True, slots=True)
class Limits:
    """What the checks allow; built once per receiver, not per request."""

    max_body_bytes: int
    window_seconds: int
    skew_seconds: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook that passed every check: its id (the body's SHA-256) and parsed body."""

    id: str
    envelope: Envelope


def check(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Iterable[bytes],
    now: datetime,
    limits: Limits,
) -> Delivery:
    """Every check the receiver makes before the enqueue, in the order it makes them.

    `headers` is case-insensitive (aiohttp's `request.headers`, a `multidict.CIMultiDict`).
    Raises Rejected carrying the HTTP status and code of the README's answers table.
    """
    return check_body(check_headers(headers, limits), body, secrets, now, limits)


def check_headers(headers: Mapping[str, str], limits: Limits) -> str:
    """The checks that need no body: the signature header's presence and form (401), the
    media type (415) and a declared length over the limit (413). Returns the signature."""
    return check_header_values(
        headers.get(signature.HEADER),
        headers.get("Content-Type"),
        headers.get("Content-Length"),
        limits,
    )


def check_header_values(
    sent: str | None, content_type: str | None, length: str | None, limits: Limits
) -> str:
    """`check_headers` on the three values it reads (None: not sent), for a caller that
    parsed the headers itself (the socket lane)."""
    if sent is None:
        raise Rejected(401, "missing_signature", f"the {signature.HEADER} header is required")
    sent = sent.strip()
    if not signature.is_well_formed(sent):
        raise Rejected(401, "malformed_signature", f"{signature.HEADER} must be 64 hex characters")
    if not _content_type_ok(content_type):
        raise Rejected(415, "unsupported_media_type", "Content-Type must be application/json")
    if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
        raise too_large(limits)
    return sent


def check_body(
    sent: str, body: bytes, secrets: Iterable[bytes], now: datetime, limits: Limits
) -> Delivery:
    """The signature on the raw bytes first (401), then the body (400, 422, via
    `envelope.parse`, which decodes it once and runs the worker's typed parse)."""
    if len(body) > limits.max_body_bytes:
        raise too_large(limits)
    if not signature.verify(body, sent, secrets):
        raise Rejected(401, "invalid_signature", "signature does not match the body")
    delivery_id = envelope.delivery_id(body)
    try:
        env = envelope.parse(
            body,
            now=now,
            window_seconds=limits.window_seconds,
            skew_seconds=limits.skew_seconds,
            delivery_id=delivery_id,
        )
    except Rejected as exc:
        exc.delivery_id = delivery_id  # the receiver logs which delivery it refused
        raise
    return Delivery(id=delivery_id, envelope=env)


def too_large(limits: Limits) -> Rejected:
    """The 413 for a body over the limit (also what the receiver answers mid-read)."""
    return Rejected(413, "body_too_large", f"body is over {limits.max_body_bytes} bytes")


def body_timeout() -> Rejected:
    """The 408 for a body that did not arrive within BODY_READ_TIMEOUT_SECONDS."""
    return Rejected(408, "body_timeout", "the body did not arrive in time")


def _content_type_ok(value: str | None) -> bool:
    if not value:
        return True  # not sent: the signature already vouches for the body
    mime = value.partition(";")[0].strip().lower()
    # octet-stream is what many HTTP clients send for raw bytes; the body is still checked.
    return mime in ("application/json", "application/octet-stream") or mime.endswith("+json")
