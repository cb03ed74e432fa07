"""The campaign's limits in the dial script itself (agents/campaign/store.py `_NEXT`), on
a real Redis: concurrency, calls per minute, the budget's reservations, the calling
window, pause; and the calling window's arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime

from ringez_worker.agents.campaign.models import CampaignConfig, Contact
from ringez_worker.agents.campaign.store import CampaignStore
from ringez_worker.agents.campaign.window import closed_zones, is_open, seconds_until_open

NOW = 1_800_000_000_000


async def campaign(redis_client, n: int = 4, **config) -> tuple[CampaignStore, str]:
    store = CampaignStore(redis_client)
    contacts = [Contact(f"c{i}", f"+1500666003{i}", i + 2) for i in range(n)]
    model = CampaignConfig(message="m", **config)
    await store.create("cmp_t", model, contacts, frozenset(), 0.05, NOW)
    await store.move("cmp_t", ("draft",), "running", "", NOW)
    return store, "cmp_t"


async def test_no_more_than_max_concurrent_claims(redis_client):
    store, cid = await campaign(redis_client, max_concurrent=2)
    assert (await store.next_dial(cid, NOW, []))[:3] == ("dial", "c0", "1")
    assert (await store.next_dial(cid, NOW, []))[:2] == ("dial", "c1")
    assert await store.next_dial(cid, NOW, []) == ("full",)
    assert await store.dialed(cid, "c0", 1, "call_a", 0.05, NOW, 60)
    state = await store.finish(
        cid, "c0", "call_a", "completed", duration=0, cost=0, now_ms=NOW, retry_due_ms=NOW,
        max_attempts=1, reason="", opt_out_digit="9",
    )  # fmt: skip
    assert state == "no_answer"  # completed without an answer, no retries left
    assert (await store.next_dial(cid, NOW, []))[:2] == ("dial", "c2")


async def test_calls_per_minute_counts_dials_in_flight(redis_client):
    store, cid = await campaign(redis_client, calls_per_minute=2)
    assert (await store.next_dial(cid, NOW, []))[0] == "dial"
    assert (await store.next_dial(cid, NOW + 1000, []))[0] == "dial"
    why, wait = await store.next_dial(cid, NOW + 2000, [])
    assert why == "rate" and int(wait) > 60_000  # in flight: held until answered
    await store.dialed(cid, "c0", 1, "call_a", None, NOW + 3000, 60)
    why, wait = await store.next_dial(cid, NOW + 4000, [])
    assert why == "rate" and int(wait) == 59_000  # a minute after c0's call was made
    assert (await store.next_dial(cid, NOW + 63_001, []))[0] == "dial"


async def test_the_budget_holds_with_reservations_until_the_real_cost(redis_client):
    # 0.05 a minute x 2 minutes (max_duration 120 s) = 0.10 reserved per live call.
    store, cid = await campaign(redis_client, budget=0.25, max_duration=120)
    assert (await store.next_dial(cid, NOW, []))[0] == "dial"
    assert (await store.next_dial(cid, NOW, []))[0] == "dial"
    assert await store.next_dial(cid, NOW, []) == ("budget",)  # 0.20 + 0.10 > 0.25
    await store.dialed(cid, "c0", 1, "call_a", 0.05, NOW, 60)
    await store.answered(cid, "c0", "call_a", NOW)
    await store.finish(
        cid, "c0", "call_a", "completed", duration=30, cost=0.05, now_ms=NOW, retry_due_ms=NOW,
        max_attempts=3, reason="", opt_out_digit="9",
    )  # fmt: skip
    record = await store.get(cid)
    assert float(record["spent"]) == 0.05 and abs(float(record["reserved"]) - 0.10) < 1e-9
    assert (await store.next_dial(cid, NOW, []))[0] == "dial"  # 0.05 + 0.10 + 0.10 <= 0.25
    assert await store.next_dial(cid, NOW, []) == ("budget",)


async def test_closed_zones_and_pause_stop_dialing(redis_client):
    store, cid = await campaign(redis_client, timezone="Asia/Tokyo")
    assert await store.next_dial(cid, NOW, ["Asia/Tokyo"]) == ("closed",)
    await store.move(cid, ("running",), "paused", "paused by user", NOW)
    assert await store.next_dial(cid, NOW, []) == ("stopped",)


def test_the_window_is_local_and_stops_a_minute_before_its_end():
    at = datetime(2026, 12, 2, 17, 58, tzinfo=UTC)
    assert is_open("09:00-18:00", "UTC", datetime(2026, 12, 2, 17, 58, tzinfo=UTC))
    assert not is_open("09:00-18:00", "UTC", datetime(2026, 12, 2, 17, 59, 30, tzinfo=UTC))
    assert closed_zones("09:00-18:00", ["UTC", "Asia/Tokyo", "America/New_York"], at) == [
        "Asia/Tokyo"
    ]  # 02:58 there; 12:58 in New York
    assert is_open("22:00-06:00", "UTC", datetime(2026, 12, 2, 23, 0, tzinfo=UTC))
    assert is_open("22:00-06:00", "UTC", datetime(2026, 12, 3, 5, 0, tzinfo=UTC))
    assert not is_open("22:00-06:00", "UTC", datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
    assert (
        seconds_until_open("09:00-18:00", ["UTC"], datetime(2026, 12, 2, 8, 30, tzinfo=UTC)) == 1800
    )
    assert is_open(None, "UTC", at)


async def test_a_call_that_talked_without_its_answer_handled_is_not_called_again(redis_client):
    store, cid = await campaign(redis_client)
    await store.next_dial(cid, NOW, [])
    await store.dialed(cid, "c0", 1, "call_a", 0.05, NOW, 60)
    # call.completed with a duration, no call.answered handled: it was answered.
    state = await store.finish(
        cid, "c0", "call_a", "completed", duration=42, cost=0.05, now_ms=NOW, retry_due_ms=NOW,
        max_attempts=3, reason="", opt_out_digit="9",
    )  # fmt: skip
    record = await store.contact(cid, "c0")
    assert (state, record["reason"], record["duration"]) == (
        "done",
        "answered; message not played",
        "42",
    )
