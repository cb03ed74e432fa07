"""The chaos run's counts, how they are judged, and the table printed at the end."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# A handler re-run is put down to the at-least-once window (the worker died, or Redis went
# away, between the handler's effect and the service's completion record) only if the
# first run's worker was SIGKILLed, or Redis stopped, this soon after the first run.
CRASH_WINDOW_MS = 1000


@dataclass
class EffectRun:
    """One success of the `chaos.effect` handler, from `chaos:log`."""

    at_ms: int
    pid: int
    job_try: int


@dataclass
class ChaosResult:
    config: dict[str, Any]
    seconds: float = 0.0
    quiesced: bool = False
    service_tree: str = ""
    crashed: list[str] = field(default_factory=list)  # processes that died on their own
    # Load.
    events_planned: int = 0
    scripts: dict[str, int] = field(default_factory=dict)
    events_by_type: dict[str, int] = field(default_factory=dict)
    send_answers: dict[int, int] = field(default_factory=dict)
    send_retries: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    plan_collisions: int = 0
    redeliveries: int = 0
    redelivery_answers: dict[int, int] = field(default_factory=dict)
    # Chaos.
    kills: int = 0
    worker_starts: int = 0
    redis_restarts: int = 0
    redis_down_seconds: float = 0.0
    api_requests: int = 0
    injected: dict[int, int] = field(default_factory=dict)
    longest_wait_seconds: float = 0.0
    waits: list[str] = field(default_factory=list)
    # Delivery counts.
    acknowledged: int = 0
    accepted_twice: int = 0  # deliveries answered 202 more than once (the dedupe failed)
    handled: int = 0
    lost: list[str] = field(default_factory=list)
    lost_in_failed_record: int = 0
    unexpected: int = 0  # handled deliveries nobody acknowledged
    exact_runs: Counter[int] = field(default_factory=Counter)  # runs per delivery -> count
    exact_duplicates: list[str] = field(default_factory=list)
    effect_runs: Counter[int] = field(default_factory=Counter)
    effect_duplicates_explained: list[str] = field(default_factory=list)
    effect_duplicates_unexplained: list[str] = field(default_factory=list)
    effect_missing: int = 0  # handled deliveries without the effect (not in the record)
    handler_successes_owed: int = 0
    owed_examples: list[str] = field(default_factory=list)
    failed_record: int = 0
    failed_by_handler: dict[str, int] = field(default_factory=dict)
    failed_examples: list[str] = field(default_factory=list)
    # Agents' side effects.
    angry_calls: int = 0
    transfers_per_call: Counter[int] = field(default_factory=Counter)  # over angry calls
    transfers_elsewhere: int = 0
    # Angry calls never transferred, by the escalation claim's state. "claimed" would be a
    # claim left by an attempt that died before sending and that no retry took over (a
    # failure); "sending" one that died while sending, recorded as failed for a person.
    untransferred_by_claim: dict[str, int] = field(default_factory=dict)
    transfer_mismatch: int = 0  # request log and sandbox state disagree
    max_transfers: int = 0
    episodes: int = 0
    charges_per_episode: Counter[int] = field(default_factory=Counter)
    max_charges: int = 0
    episodes_uncharged: int = 0
    charge_requests_ok: int = 0
    charge_replays: int = 0
    transactions: int = 0
    charges_outside_episodes: int = 0
    done_fault_seconds: float = 0.0
    full_seconds: float = 0.0
    readyz_when_full: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Every broken promise; empty means the run passed."""
        found = []
        if not self.quiesced:
            found.append("the queue did not drain before the deadline")
        if self.config.get("redis_restart") and not self.redis_down_seconds:
            found.append("the Redis restart did not happen")
        if self.config.get("done_fault_seconds") and not self.done_fault_seconds:
            found.append("the completion-record write fault did not happen")
        if self.config.get("full_redis_seconds"):
            if not self.full_seconds:
                found.append("the full-Redis phase did not happen")
            elif self.readyz_when_full != 503:
                found.append(
                    f"the receiver's /readyz said {self.readyz_when_full} while Redis was full"
                )
        if self.config.get("kill_every") and not self.kills:
            found.append("no worker was killed")
        if self.crashed:
            found.append(f"{len(self.crashed)} service processes exited on their own")
        if self.acknowledged < self.events_planned:
            found.append(
                f"only {self.acknowledged} of {self.events_planned} events were acknowledged"
            )
        if self.refused:
            found.append(f"the receiver refused events: {self.refused}")
        if self.plan_collisions:
            found.append(f"{self.plan_collisions} planned events had the same body")
        if self.lost:
            found.append(f"{len(self.lost)} acknowledged deliveries were never handled")
        if self.unexpected:
            found.append(f"{self.unexpected} handled deliveries were never acknowledged")
        if self.accepted_twice:
            found.append(f"{self.accepted_twice} deliveries were accepted (202) twice")
        if self.exact_duplicates:
            found.append(
                f"{len(self.exact_duplicates)} deliveries ran a handler again after its "
                "recorded success (or twice at once)"
            )
        if self.effect_duplicates_unexplained:
            found.append(
                f"{len(self.effect_duplicates_unexplained)} handler re-runs that no crash explains"
            )
        if self.handler_successes_owed:
            found.append(f"{self.handler_successes_owed} handler successes missing")
        if self.max_transfers > 1 or self.transfers_elsewhere or self.transfer_mismatch:
            found.append("a call was transferred more than once (or a stray transfer)")
        if self.untransferred_by_claim.get("claimed"):
            found.append(
                f"{self.untransferred_by_claim['claimed']} angry calls were left claimed by "
                "an attempt that died before sending, and never transferred"
            )
        if self.max_charges > 1 or self.charges_outside_episodes:
            found.append("a low-balance episode was charged more than once")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        cfg = self.config
        rows: list[tuple[str, str]] = []

        def row(name: str, value: object) -> None:
            rows.append((name, str(value)))

        def section(title: str) -> None:
            rows.append(("", ""))
            rows.append((f"[{title}]", ""))

        section("run")
        row(
            "config",
            f"events={cfg['events']} workers={cfg['workers']} kill_every={cfg['kill_every']}s "
            f"seed={cfg['seed']} rate={cfg['rate']}/s lease={cfg['lease_seconds']}s",
        )
        row("service under test", self.service_tree)
        row("wall time", f"{self.seconds:.1f} s")
        row("drained", "yes" if self.quiesced else "NO")
        section("load")
        row("events planned (distinct)", self.events_planned)
        row("by type", _kv(self.events_by_type))
        row("scripts", _kv(self.scripts))
        row("redeliveries sent", f"{self.redeliveries} (answers {_kv(self.redelivery_answers)})")
        row("receiver answers", _kv(self.send_answers) + "  (0 = no answer)")
        row("sender retries", self.send_retries)
        section("chaos")
        row("workers SIGKILLed", self.kills)
        row("worker processes started", self.worker_starts)
        row(
            "Redis restarts",
            f"{self.redis_restarts} ({cfg['redis_stop']}, down {self.redis_down_seconds:.1f} s)",
        )
        row("completion-record writes refused", f"{self.done_fault_seconds:.1f} s (ACL)")
        row(
            "Redis full (maxmemory, noeviction)",
            f"{self.full_seconds:.1f} s, receiver /readyz said {self.readyz_when_full}",
        )
        row("API requests to the sandbox", self.api_requests)
        row("API faults injected", _kv(self.injected))
        row("longest a due job waited unclaimed", f"{self.longest_wait_seconds:.1f} s")
        section("deliveries")
        row("acknowledged (2xx, distinct)", self.acknowledged)
        row("handled (chaos.exact success)", self.handled)
        row("lost (acknowledged, never handled)", len(self.lost))
        row("  of which in the failed-events record", self.lost_in_failed_record)
        row("handled but never acknowledged", self.unexpected)
        row("accepted (202) twice", self.accepted_twice)
        row("chaos.exact runs per delivery", _kv(self.exact_runs))
        row("duplicate runs after a recorded success", len(self.exact_duplicates))
        row("chaos.effect runs per delivery", _kv(self.effect_runs))
        row("  re-runs in the crash window", len(self.effect_duplicates_explained))
        row("  re-runs no crash explains", len(self.effect_duplicates_unexplained))
        row("handler successes missing", self.handler_successes_owed)
        row("failed-events record (rz:failed)", self.failed_record)
        if self.failed_by_handler:
            row("  by handler", _kv(self.failed_by_handler))
        section("agents")
        row("angry calls", self.angry_calls)
        row("transfers per angry call", _kv(self.transfers_per_call))
        row("  not transferred, by claim state", _kv(self.untransferred_by_claim))
        row("max transfers on one call", self.max_transfers)
        row("transfers on other calls", self.transfers_elsewhere)
        row("low-balance episodes", self.episodes)
        row("charges per episode", _kv(self.charges_per_episode))
        row("max charges in one episode", self.max_charges)
        row("episodes not charged in time", self.episodes_uncharged)
        row(
            "add-credits 200s / replays / transactions",
            f"{self.charge_requests_ok} / {self.charge_replays} / {self.transactions}",
        )
        width = max(len(name) for name, _ in rows)
        lines = ["chaos run"]
        for name, value in rows:
            lines.append(f"  {name:<{width}}  {value}".rstrip() if name else "")
        problems = self.problems
        lines.append("")
        lines.append("RESULT: " + ("PASS" if not problems else "FAIL"))
        lines.extend(f"  - {p}" for p in problems)
        examples = [
            ("exited on their own", self.crashed),
            ("lost", self.lost),
            ("duplicate runs", self.exact_duplicates),
            ("unexplained re-runs", self.effect_duplicates_unexplained),
            ("crash-window re-runs", self.effect_duplicates_explained),
            ("handler successes missing", self.owed_examples),
            ("failed-events record", self.failed_examples),
            ("due jobs unclaimed for 2 s or more, by the chaos event before", self.waits),
        ]
        for title, items in examples:
            if items:
                lines.append(f"  {title} (first {min(len(items), 5)}):")
                lines.extend(f"    {item}" for item in items[:5])
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _kv(mapping: dict[Any, int] | Counter[Any]) -> str:
    if not mapping:
        return "-"
    return " ".join(f"{k}:{v}" for k, v in sorted(mapping.items(), key=lambda kv: str(kv[0])))


def explain_rerun(
    runs: list[EffectRun],
    killed_ms: dict[int, int],
    redis_stops_ms: list[int],
    refusals_ms: list[tuple[int, int]] = (),  # type: ignore[assignment]
) -> str | None:
    """Why a handler succeeded more than once, or None if no crash explains it.

    Each run but the last must be followed, within CRASH_WINDOW_MS, by the SIGKILL of
    its worker or a Redis stop, or fall inside a window where Redis refused writes
    (longer than the dispatcher waits for a completion record): only then could its
    completion record be missing.
    """
    runs = sorted(runs, key=lambda r: r.at_ms)
    reasons = []
    for first in runs[:-1]:
        killed = killed_ms.get(first.pid)
        if killed is not None and 0 <= killed - first.at_ms <= CRASH_WINDOW_MS:
            reasons.append(f"worker {first.pid} killed {killed - first.at_ms} ms after its run")
            continue
        stop = next((s for s in redis_stops_ms if 0 <= s - first.at_ms <= CRASH_WINDOW_MS), None)
        if stop is not None:
            reasons.append(f"Redis stopped {stop - first.at_ms} ms after the run")
            continue
        # A run just before a window is explained too: its completion record is written
        # after the run, and on a loaded box that write can land inside the window (CI,
        # 2026-12-02: a run 50-odd ms before the full-Redis window, its worker killed
        # 1.6 s later while the write was still refused).
        if any(start - CRASH_WINDOW_MS <= first.at_ms <= end for start, end in refusals_ms):
            reasons.append("its completion record was refused (write fault window)")
            continue
        return None
    return "; ".join(reasons)
