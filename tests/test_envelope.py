from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ringez_worker.worker import envelope

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def parse(payload: object) -> envelope.Envelope:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return envelope.parse(body, now=NOW, window_seconds=3600, skew_seconds=300)


DATA = {"call_id": "call_1", "session_id": "sess_1"}


def ok(**over: object) -> dict:
    return {"event": "call.answered", "timestamp": "2026-11-24T11:59:00Z", "data": DATA, **over}


def test_a_good_body_parses():
    env = parse(ok())
    assert env.event == "call.answered"
    assert env.timestamp == datetime(2026, 11, 24, 11, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1,2]", 400, "not_an_object"),
        (b'"text"', 400, "not_an_object"),
        (b"[" * 40 + b"]" * 40, 400, "not_an_object"),
        (b'{"event":"x","data":{"a":' + b"[" * 40 + b"]" * 40 + b"}}", 400, "too_deep"),
        ({"timestamp": "2026-11-24T11:59:00Z", "data": {}}, 422, "missing_event"),
        (ok(event=""), 422, "missing_event"),
        (ok(event=5), 422, "missing_event"),
        (ok(data=None), 422, "missing_data"),
        (ok(data=[1]), 422, "missing_data"),
        ({"event": "call.answered", "data": {}}, 422, "missing_timestamp"),
        (ok(timestamp="yesterday"), 422, "invalid_timestamp"),
        (ok(timestamp=1700000000), 422, "invalid_timestamp"),
        # Each of these got a 202 and then failed to parse in the worker.
        (ok(timestamp="2026-W48-2T11:59:00Z"), 422, "invalid_timestamp"),
        (ok(timestamp="20261124T115900Z"), 422, "invalid_timestamp"),
        (ok(timestamp="2026-11-24T11Z"), 422, "invalid_timestamp"),
        (ok(timestamp="2026-11-24T11:59:00+00"), 422, "invalid_timestamp"),
        (ok(timestamp="2026-11-24T11:59:00+00:00:00"), 422, "invalid_timestamp"),
        (ok(timestamp="2026-11-24"), 422, "invalid_timestamp"),
        (ok(timestamp="2026-11-24T11:59:0\u0661Z"), 422, "invalid_timestamp"),
        # A contract event whose data the typed event could not read.
        (ok(data={"session_id": "sess_1"}), 422, "invalid_data"),
        (ok(event="call.completed", data={**DATA, "duration": "long"}), 422, "invalid_data"),
        (ok(event="balance.low", data={"session_id": "s", "balance": 3}), 422, "invalid_data"),
        (ok(timestamp="2026-11-24T10:00:00Z"), 422, "timestamp_expired"),
        (ok(timestamp="2026-11-24T12:10:00Z"), 422, "timestamp_in_future"),
    ],
)
def test_bad_bodies_get_their_own_status_and_code(payload, status, code):
    with pytest.raises(envelope.EnvelopeError) as info:
        parse(payload)
    assert (info.value.status, info.value.code) == (status, code)


def test_timestamps_with_offsets_and_naive_ones_are_understood():
    assert parse(ok(timestamp="2026-11-24T13:59:00+02:00")).timestamp == NOW - timedelta(minutes=1)
    assert parse(ok(timestamp="2026-11-24T11:59:00")).timestamp.tzinfo is not None


def test_unknown_event_names_pass_with_any_data():
    assert parse(ok(event="custom.thing", data={"x": 1})).event == "custom.thing"


def test_delivery_id_is_the_sha256_of_the_raw_body():
    assert envelope.delivery_id(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize(
    ("levels", "leaf", "accepted"),
    [
        (envelope.MAX_DEPTH - 2, b"", True),
        (envelope.MAX_DEPTH - 1, b"", False),
        # A scalar inside the innermost list is a level of its own.
        (envelope.MAX_DEPTH - 3, b"1", True),
        (envelope.MAX_DEPTH - 2, b"1", False),
    ],
)
def test_nesting_limit_is_exact(levels: int, leaf: bytes, accepted: bool) -> None:
    # `{` for the envelope and `data`, then `levels` lists (and maybe a scalar in them).
    body = (
        b'{"event":"x","timestamp":"2026-01-01T00:00:00Z","data":{"a":'
        + b"[" * levels
        + leaf
        + b"]" * levels
        + b"}}"
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    if accepted:
        envelope.parse(body, now=now, window_seconds=60, skew_seconds=60)
    else:
        with pytest.raises(envelope.EnvelopeError) as info:
            envelope.parse(body, now=now, window_seconds=60, skew_seconds=60)
        assert info.value.code == "too_deep"
