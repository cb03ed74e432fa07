"""The README's privacy table names every place erase reaches and every key family the
service writes: a new store or key cannot land without saying what it holds."""

from __future__ import annotations

import inspect

from ringez_worker.keys import Keys
from ringez_worker.worker.erase import PLACES
from tests.processes import ROOT

# Each Keys member's family as the table writes it (None: not stored, a channel).
FAMILIES = {
    "dedupe": "rz:d:<bucket>:<shard>",
    "job": "arq:job:<id>",
    "arq_tries": "arq:retry:<job>",
    "deferrals": "rz:deferrals:<delivery>",
    "done": "rz:done:<delivery>",
    "failed": "rz:failed",
    "failed_age": "rz:failed:age",
    "failed_evicted": "rz:failed:evicted",
    "ready_probe": "rz:ready-probe",
    "worker": "rz:worker:<name>",
    "stats": "rz:stats:<minute>",
    "deliveries": "rz:log",
    "summary": "rz:summary:<call>",
    "call_state": "rz:call:<call>:*",
    "wake": None,  # a pub/sub channel: nothing is kept
    "quality": "rz:call:<call>:quality:record",
    "recharge": "rz:recharge:charge:<key>",
    "recharges": "rz:recharge:charges",
    "report": "rz:report:<id>",
    "reports": "rz:reports",
    "report_claim": "rz:report:claim:<time>",
    "queue": "ringez:queue",
    "callback": "rz:callback:<id>",
    "campaign": "rz:campaign:<id>",
}


def privacy_table() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Privacy", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_every_erasable_place_has_a_row_saying_what_it_holds():
    rows = {row[0]: row for row in privacy_table()}
    for place in PLACES:
        assert place.name in rows, place.name
        assert rows[place.name][2] and rows[place.name][3], place.name
        assert place.where.split()[0].split("<")[0] in rows[place.name][1], place.name


def assert_families_in_the_table(keys_class: type, families: dict[str, str | None]) -> None:
    """Every public member of `keys_class` is named in `families`, and each family is
    written in the table's `where` column."""
    members = {
        name
        for name, _ in inspect.getmembers(keys_class)
        if not name.startswith("_") and name not in ("prefix",)
    }
    assert members == set(families), f"a new {keys_class.__name__} member: add it to the table"
    where = " ".join(row[1] for row in privacy_table())
    for name, family in families.items():
        if family is not None:
            assert f"`{family}`" in where, name


def test_every_key_family_is_in_the_table():
    assert_families_in_the_table(Keys, FAMILIES)


# Each CallbackKeys member's family as the table writes it.
CALLBACK_FAMILIES = {
    "request": "rz:callback:<id>",
    "request_prefix": None,  # the prefix of `request`, not a key
    "call": "rz:callback:call:<call>",
    "idempotency": "rz:callbacks:idem:<hash>",
    "new": "rz:callbacks:{new,queue,retry,assigned}",
    "queue": "rz:callbacks:{new,queue,retry,assigned}",
    "retry": "rz:callbacks:{new,queue,retry,assigned}",
    "assigned": "rz:callbacks:{new,queue,retry,assigned}",
    "roster": "rz:callbacks:roster",
    "roster_version": "rz:callbacks:roster:version",
    "load": "rz:callbacks:load",
    "sweep": "rz:callbacks:sweep",
}


def test_every_callback_key_family_is_in_the_table():
    from ringez_worker.agents.callbacks.store import CallbackKeys

    assert_families_in_the_table(CallbackKeys, CALLBACK_FAMILIES)
