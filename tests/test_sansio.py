"""The receiver's checks as a pure function: every row of the README's answers table
that is decided before the enqueue, without a server, a socket or Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from multidict import CIMultiDict

from ringez_worker import signature
from ringez_worker.worker import sansio
from ringez_worker.worker.envelope import delivery_id

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
SECRETS = (b"whsec_new", b"whsec_old")
LIMITS = sansio.Limits(max_body_bytes=2048, window_seconds=3600, skew_seconds=300)
DATA = {"call_id": "call_1", "session_id": "sess_1"}


def body_of(**over: object) -> bytes:
    payload = {"event": "call.answered", "timestamp": "2026-12-02T02:59:09Z", "data": DATA}
    return orjson.dumps({**payload, **over})


def headers_for(body: bytes, secret: bytes = SECRETS[0], **extra: str) -> CIMultiDict[str]:
    headers = CIMultiDict({"content-type": "application/json", "content-length": str(len(body))})
    headers[signature.HEADER] = signature.sign(body, secret)
    headers.update(extra)
    return headers


def rejected(headers, body: bytes) -> tuple[int, str]:
    with pytest.raises(sansio.Rejected) as info:
        sansio.check(headers, body, SECRETS, NOW, LIMITS)
    return info.value.status, info.value.code


def test_a_good_webhook_is_a_verified_parsed_delivery() -> None:
    body = body_of()
    delivery = sansio.check(headers_for(body), body, SECRETS, NOW, LIMITS)
    assert delivery.id == delivery_id(body)
    assert delivery.envelope.event == "call.answered"
    assert delivery.envelope.timestamp == datetime(2026, 12, 2, 2, 59, 9, tzinfo=UTC)
    assert delivery.envelope.payload["data"]["call_id"] == "call_1"


def test_the_previous_secret_still_verifies_during_a_rotation() -> None:
    body = body_of()
    assert sansio.check(headers_for(body, SECRETS[1]), body, SECRETS, NOW, LIMITS).id


def test_header_names_are_case_insensitive_and_the_signature_may_be_upper_case() -> None:
    body = body_of()
    headers = CIMultiDict({"X-RINGEZ-SIGNATURE": signature.sign(body, SECRETS[0]).upper()})
    assert sansio.check(headers, body, SECRETS, NOW, LIMITS).id == delivery_id(body)


def test_signature_rows() -> None:
    body = body_of()
    missing = headers_for(body)
    del missing[signature.HEADER]
    assert rejected(missing, body) == (401, "missing_signature")
    assert rejected(headers_for(body, **{signature.HEADER: "zz" * 32}), body) == (
        401,
        "malformed_signature",
    )
    assert rejected(headers_for(body, **{signature.HEADER: "ab"}), body) == (
        401,
        "malformed_signature",
    )
    assert rejected(headers_for(body, b"whsec_wrong"), body) == (401, "invalid_signature")
    # Signed for another body: the signature is checked on the raw bytes.
    assert rejected(headers_for(body_of(event="call.ringing")), body) == (401, "invalid_signature")


def test_the_signature_comes_before_the_body_is_parsed() -> None:
    body = b"{not json"
    assert rejected(headers_for(body, b"whsec_wrong"), body) == (401, "invalid_signature")


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/octet-stream", True),
        ("application/vnd.ringez+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
    ],
)
def test_media_type_row(content_type: str, ok: bool) -> None:
    body = body_of()
    headers = headers_for(body, **{"Content-Type": content_type})
    if ok:
        assert sansio.check(headers, body, SECRETS, NOW, LIMITS).id
    else:
        assert rejected(headers, body) == (415, "unsupported_media_type")


def test_a_missing_content_type_is_accepted() -> None:
    body = body_of()
    headers = headers_for(body)
    del headers["Content-Type"]
    assert sansio.check(headers, body, SECRETS, NOW, LIMITS).id


def test_too_large_rows_declared_and_actual() -> None:
    body = body_of(data={**DATA, "text": "x" * 3000})
    assert rejected(headers_for(body), body) == (413, "body_too_large")
    headers = headers_for(body)
    del headers["Content-Length"]  # chunked: only the body's own length tells
    assert rejected(headers, body) == (413, "body_too_large")
    # The declared length decides before the body is read.
    with pytest.raises(sansio.Rejected) as info:
        sansio.check_headers(headers_for(body), LIMITS)
    assert info.value.status == 413


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "not_an_object"),
        (b'{"event":"x","data":{"a":' + b"[" * 40 + b"]" * 40 + b"}}", 400, "too_deep"),
        (orjson.dumps({"timestamp": "2026-12-02T02:59:09Z", "data": DATA}), 422, "missing_event"),
        (body_of(event="x" * 201), 422, "invalid_event"),
        (body_of(data=None), 422, "missing_data"),
        (orjson.dumps({"event": "call.answered", "data": DATA}), 422, "missing_timestamp"),
        (body_of(timestamp="2026-W49-3T02:59:09Z"), 422, "invalid_timestamp"),
        (body_of(timestamp="20261202T025909Z"), 422, "invalid_timestamp"),
        (body_of(timestamp="2026-12-02T02Z"), 422, "invalid_timestamp"),
        (body_of(timestamp="2026-12-02T02:59:09+00"), 422, "invalid_timestamp"),
        (body_of(timestamp="2026-12-02T02:59:09+00:00:00"), 422, "invalid_timestamp"),
        (body_of(timestamp="2026-12-02"), 422, "invalid_timestamp"),
        (body_of(timestamp="2026-12-02T01:00:00Z"), 422, "timestamp_expired"),
        (body_of(timestamp="2026-12-02T03:06:00Z"), 422, "timestamp_in_future"),
        (body_of(data={"session_id": "s"}), 422, "invalid_data"),
    ],
)
def test_body_rows(body: bytes, status: int, code: str) -> None:
    assert rejected(headers_for(body), body) == (status, code)


def test_a_refusal_after_the_signature_names_the_delivery() -> None:
    body = body_of(timestamp="2026-12-02")
    with pytest.raises(sansio.Rejected) as info:
        sansio.check(headers_for(body), body, SECRETS, NOW, LIMITS)
    assert info.value.delivery_id == delivery_id(body)


def test_unknown_event_names_are_accepted() -> None:
    body = body_of(event="custom.thing", data={"anything": [1, 2]})
    assert sansio.check(headers_for(body), body, SECRETS, NOW, LIMITS).envelope.event == (
        "custom.thing"
    )
