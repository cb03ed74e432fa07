"""Anything the receiver accepts, the worker parses: the receiver's checks against the
worker's own path (the job record, then `parse_event`), on generated bodies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringez_worker.handlers.events import EVENT_NAMES, parse_event
from ringez_worker.jobs import job_bytes, loads_job
from ringez_worker.worker import envelope

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]


def _shapes(moment: datetime) -> list[str]:
    """One moment written the ways senders write it, right and wrong."""
    iso = moment.isoformat()
    year, week, day = moment.isocalendar()
    return [
        iso,
        iso.replace("+00:00", "Z"),
        moment.replace(tzinfo=None).isoformat(),
        moment.isoformat(timespec="milliseconds"),
        moment.isoformat(timespec="hours"),
        moment.isoformat(timespec="minutes"),
        moment.date().isoformat(),
        moment.strftime("%Y%m%dT%H%M%SZ"),
        f"{year}-W{week:02d}-{day}T{moment:%H:%M:%S}Z",
        iso[:-3] if iso.endswith("+00:00") else iso + ":00",
        iso + ":00",
        moment.strftime("%Y-%m-%d %H:%M:%S"),
    ]


timestamps = st.one_of(
    st.builds(
        lambda m, i: _shapes(m)[i % 12],
        st.datetimes(
            min_value=datetime(2000, 1, 1),
            max_value=datetime(2100, 1, 1),
            timezones=st.sampled_from(ZONES),
        ),
        st.integers(0, 11),
    ),
    st.text(max_size=30),
    st.integers(-(2**63), 2**63 - 1),
    st.none(),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = [
    "call_id", "session_id", "answered_at", "duration", "cost", "reason", "text", "speaker",
    "is_final", "confidence", "balance",
]  # fmt: skip
data = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=6),
    json_values | st.fixed_dictionaries({"minutes": json_scalars, "value": json_scalars}),
    max_size=8,
)
payloads = st.fixed_dictionaries(
    {"event": st.sampled_from([*sorted(EVENT_NAMES), "custom.event"]), "data": data},
    optional={"timestamp": timestamps, "extra": json_values},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_anything_the_receiver_accepts_the_worker_parses(payload: dict) -> None:
    body = orjson.dumps(payload)
    delivery = envelope.delivery_id(body)
    try:
        # A window wide enough that only the format decides, not the clock.
        env = envelope.parse(
            body, now=NOW, window_seconds=10**10, skew_seconds=10**10, delivery_id=delivery
        )
    except envelope.EnvelopeError:
        return
    # The worker's path: the job record the receiver writes, then the typed parse.
    job = loads_job(job_bytes(delivery, body, 0))
    event = parse_event(orjson.loads(job["a"][1]), delivery)
    assert event.timestamp == env.timestamp
    assert event.timestamp.tzinfo is not None
    assert event == envelope.check_typed(env.payload, env.timestamp, delivery)
