"""The calling window: which contacts' time zones may be dialed now, and when the next
one opens. Computed in Python (zoneinfo) and handed to the dial script as the list of
closed zones, a moment before it runs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

# A zone counts as closed this long before its window ends: a call dialed just inside
# the window must not ring outside it.
END_MARGIN = timedelta(seconds=60)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def is_open(window: str | None, zone: str, now: datetime) -> bool:
    """Whether `now` (aware) is inside `window` ("HH:MM-HH:MM", local to `zone`), with the
    end margin; a window may wrap midnight (22:00-06:00)."""
    if window is None:
        return True
    start_s, end_s = window.split("-")
    start, end = _minutes(start_s), _minutes(end_s)
    local = now.astimezone(ZoneInfo(zone))
    late = local + END_MARGIN
    at = local.hour * 60 + local.minute
    at_late = late.hour * 60 + late.minute + (1440 if late.date() > local.date() else 0)
    if start < end:
        return start <= at and at_late < end
    # Wrapping: open from start to midnight and from midnight to end.
    if at >= start:
        return at_late < end + 1440
    return at_late < end


def closed_zones(
    window: str | None, zones: Iterable[str], now: datetime | None = None
) -> list[str]:
    now = now or datetime.now(UTC)
    return sorted(z for z in set(zones) if not is_open(window, z, now))


def seconds_until_open(
    window: str | None, zones: Iterable[str], now: datetime | None = None
) -> float:
    """Seconds until the first of `zones` is open (0 if one is), found minute by minute
    over the next day (DST shifts make arithmetic on local times unsafe)."""
    now = now or datetime.now(UTC)
    zones = list(set(zones))
    for minute in range(0, 24 * 60 + 1):
        at = now + timedelta(minutes=minute)
        if any(is_open(window, z, at) for z in zones):
            return float(minute * 60)
    return 3600.0
