"""The one timestamp parser: its C fast path for "...Z" reads what its own reading does."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringez_worker.timestamps import _RFC3339, _read, parse_timestamp

# Everything the pattern accepts: dates and times out of range too (the 99th month, the
# 60th second), which both paths must refuse alike.
stamps = st.from_regex(_RFC3339, fullmatch=True).filter(str.isascii)


def _both(value: str) -> tuple[object, object]:
    def run(parse: Callable[[], datetime]) -> object:
        try:
            parsed = parse()
        except ValueError:
            return ValueError
        return parsed, parsed.utcoffset()

    match = _RFC3339.fullmatch(value)
    assert match is not None
    return run(lambda: parse_timestamp(value)), run(lambda: _read(match))


@given(stamps)
def test_the_fast_path_reads_what_the_pattern_reads(value):
    fast, read = _both(value)
    assert fast == read


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-03T06:46:42Z",
        "2026-12-03t06:46:42.1Z",
        "2026-12-03 06:46:42.123456789Z",
        "2026-12-03T06:46:60Z",  # a leap second: refused by both
        "2026-02-29T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2026-12-03T06:46:42+05:60",  # fromisoformat would read +06:00
        "2026-12-03T06:46:42z",
        "2026-12-03T24:00:00Z",  # newer Pythons read it as the next midnight
    ],
)
def test_edge_cases_read_alike(value):
    fast, read = _both(value)
    assert fast == read


def test_a_z_timestamp_is_utc_and_an_out_of_range_offset_is_refused():
    assert parse_timestamp("2026-12-03T06:46:42.5Z") == datetime(
        2026, 12, 3, 6, 46, 42, 500000, tzinfo=UTC
    )
    with pytest.raises(ValueError):
        parse_timestamp("2026-12-03T06:46:42+05:60")
