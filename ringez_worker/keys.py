"""Names of every Redis key the service writes, in one place (base layer: no runtime imports)."""

from __future__ import annotations

from dataclasses import dataclass

from arq.constants import job_key_prefix, retry_key_prefix

# Dedupe records are bucketed by the body's own timestamp, ten minutes a bucket (docs/memory.md).
BUCKET_MS = 600_000


@dataclass(frozen=True, slots=True)
class Keys:
    """Names of every Redis key the service writes, under one prefix."""

    prefix: str = "rz"
    queue: str = "ringez:queue"

    def dedupe(self, delivery_id: str, event_ms: int) -> tuple[str, bytes]:
        """(bucket key, field) of a delivery's dedupe record; `event_ms` is its timestamp."""
        bucket = event_ms // BUCKET_MS
        # 128 bits of the body hash tell deliveries apart; 8 of them pick the shard.
        return f"{self.prefix}:d:{bucket}:{delivery_id[:2]}", bytes.fromhex(delivery_id[2:34])

    def job(self, delivery_id: str) -> str:
        return job_key_prefix + delivery_id

    def arq_tries(self, job_id: str) -> str:
        """arq's own count of a job's runs (it increments it as each run starts)."""
        return retry_key_prefix + job_id

    def deferrals(self, job_id: str) -> str:
        """A job's rate-limit deferrals: how many, seconds in total, runs not counted."""
        return f"{self.prefix}:deferrals:{job_id}"

    def done(self, delivery_id: str) -> str:
        return f"{self.prefix}:done:{delivery_id}"

    @property
    def failed(self) -> str:
        return f"{self.prefix}:failed"

    @property
    def failed_age(self) -> str:
        """The failed records' delivery ids scored by their last failure (epoch ms): the
        order they leave in (retention, cap)."""
        return f"{self.prefix}:failed:age"

    @property
    def failed_evicted(self) -> str:
        """A hash of counters: failed records removed by `retention` and by `cap`."""
        return f"{self.prefix}:failed:evicted"

    @property
    def ready_probe(self) -> str:
        return f"{self.prefix}:ready-probe"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def stats(self, minute: int) -> str:
        """Per-minute counters (a hash: accepted, duplicate, rejected:<reason>, runs) for
        the console's fleet-wide last hour; `minute` is epoch seconds // 60."""
        return f"{self.prefix}:stats:{minute}"

    @property
    def deliveries(self) -> str:
        """The delivery log: a capped stream of receipts, duplicates and handler runs.
        (Not under `rz:d…`: that prefix is the dedupe records' and `rz:done:`.)"""
        return f"{self.prefix}:log"

    def summary(self, call_id: str) -> str:
        """The support agent's call summary (written by agents/support.py)."""
        return f"{self.prefix}:summary:{call_id}"

    def call_state(self, call_id: str, name: str) -> str:
        """An agent's live per-call state (agents/state.py names the same keys)."""
        return f"{self.prefix}:call:{call_id}:{name}"

    @property
    def wake(self) -> str:
        return f"{self.prefix}:wake:{self.queue}"

    def quality(self, call_id: str) -> str:
        """The quality monitor's per-call record (a hash: samples, mos_sum, mos_samples,
        mos_min, ...; agents/quality.py writes it, under the call's own keys)."""
        return self.call_state(call_id, "quality:record")

    def callback(self, request_id: str) -> str:
        """One callback request (a hash; agents/callbacks/store.py names the queue's keys)."""
        return f"{self.prefix}:callback:{request_id}"

    def campaign(self, campaign_id: str) -> str:
        """One outbound campaign (a hash; agents/campaign/store.py names its other keys)."""
        return f"{self.prefix}:campaign:{campaign_id}"

    def recharge(self, idempotency_key: str) -> str:
        """One charge's record, keyed by its idempotency key (one per episode)."""
        return f"{self.prefix}:recharge:charge:{idempotency_key}"

    @property
    def recharges(self) -> str:
        """Every kept charge record's key name, scored by the charge time (epoch s)."""
        return f"{self.prefix}:recharge:charges"

    def report(self, report_id: str) -> str:
        return f"{self.prefix}:report:{report_id}"

    @property
    def reports(self) -> str:
        """Ids of the kept reports, newest first."""
        return f"{self.prefix}:reports"

    def report_claim(self, scheduled_for: str) -> str:
        """Taken (SET NX) by the one worker that renders the report scheduled for that time."""
        return f"{self.prefix}:report:claim:{scheduled_for}"
