"""Prometheus metrics for the receiver and the worker, each in its own registry."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ringez_worker.keys import Keys

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "ringez_webhooks_received_total",
            "Webhooks accepted and queued, by event",
            ["event"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "ringez_webhooks_rejected_total",
            "Webhooks refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "ringez_webhooks_duplicate_total",
            "Redeliveries inside the dedupe window",
            registry=self.registry,
        )
        self.enqueue_seconds = Histogram(
            "ringez_enqueue_seconds",
            "Time to get a confirmed write from Redis",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Read at scrape time: a plain int costs the hot path nothing.
        self.in_flight = 0
        Gauge(
            "ringez_webhooks_in_flight", "Webhook requests being handled", registry=self.registry
        ).set_function(lambda: self.in_flight)
        self._received_by_event: dict[str, Any] = {}

    def count_received(self, event: str) -> None:
        child = self._received_by_event.get(event)
        if child is None:
            child = self._received_by_event[event] = self.received.labels(event)
        child.inc()


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.handler_runs = Counter(
            "ringez_handler_runs_total",
            "Handler runs by handler and outcome (ok, failed)",
            ["handler", "outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "ringez_deliveries_retried_total",
            "Deliveries scheduled for another try",
            registry=self.registry,
        )
        self.gave_up = Counter(
            "ringez_deliveries_failed_total",
            "Deliveries moved to the failed-events record",
            registry=self.registry,
        )
        self.handler_seconds = Histogram(
            "ringez_handler_duration_seconds",
            "Handler run time",
            ["handler"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "ringez_queue_depth", "Jobs waiting or running", registry=self.registry
        )
        self.oldest_age = Gauge(
            "ringez_queue_oldest_age_seconds",
            "Age of the oldest due job in the queue",
            registry=self.registry,
        )
        self.failed_events = Gauge(
            "ringez_failed_events", "Records in the failed-events record", registry=self.registry
        )
        # Fleet-wide, from Redis at scrape time (`queue_stats`), not counted in process:
        # records leave in whichever worker writes (or sweeps) the record, and a process
        # count would miss the other workers' and reset on restart, while the one counter
        # in Redis is what every worker's /metrics then shows alike (take max(), not sum()).
        self.failed_evicted = _RedisCounter(
            "ringez_failed_events_evicted",
            "Failed-events records removed, by reason (retention, cap); fleet-wide",
            "reason",
            ("retention", "cap"),
        )
        self.registry.register(self.failed_evicted)
        self.reports = Counter(
            "ringez_reports_total",
            "Scheduled daily reports by outcome (generated, failed)",
            ["outcome"],
            registry=self.registry,
        )


class _RedisCounter:
    """A counter whose values another process keeps (in Redis): set at scrape time."""

    def __init__(self, name: str, doc: str, label: str, values: tuple[str, ...]) -> None:
        self._name, self._doc, self._label = name, doc, label
        self.values: dict[str, float] = dict.fromkeys(values, 0.0)

    def set(self, values: dict[str, int]) -> None:
        self.values.update({k: float(v) for k, v in values.items() if k in self.values})

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for value, count in self.values.items():
            family.add_metric([value], count)
        return [family]


async def queue_stats(redis: Redis, keys: Keys) -> dict[str, Any]:
    """Depth, oldest due job's age (s), failed-events count and how many records left it
    by retention and by the cap, in one round trip."""
    now_ms = time.time() * 1000
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.queue)
        pipe.zrangebyscore(keys.queue, "-inf", now_ms, start=0, num=1, withscores=True)
        pipe.hlen(keys.failed)
        pipe.hmget(keys.failed_evicted, ["retention", "cap"])
        depth, oldest, failed, (retention, cap) = await pipe.execute()
    age = max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0.0
    evicted = {"retention": int(retention or 0), "cap": int(cap or 0)}
    return {"depth": depth, "oldest_age_s": age, "failed": failed, "failed_evicted": evicted}


async def worker_presence(redis: Redis, keys: Keys) -> list[dict[str, Any]]:
    """Every worker's presence record (`RingezWorker._presence`), as the worker wrote it."""
    records = []
    async for key in redis.scan_iter(match=keys.worker("*"), count=500):
        raw = await redis.get(key)
        if raw:
            records.append(orjson.loads(raw))
    return records


def presence_stale(record: dict[str, Any], now_ms: float) -> bool:
    """A live worker rewrites its record every `every_ms` (busy or not); one that missed
    two beats was most likely killed, though its record has not expired yet."""
    return now_ms - record["at_ms"] > 2 * record.get("every_ms", 5000)


async def redis_readiness(redis: Redis, keys: Keys) -> tuple[int, dict[str, str]]:
    """(status, body) for /readyz: 200 only when Redis takes a write.

    A PING answers on a full Redis (maxmemory + noeviction) or a read-only replica while
    every enqueue and claim is refused; one tiny write to one shared key with a short TTL
    is refused exactly when those are, costs one round trip per probe and leaves nothing
    behind. (INFO memory would need re-deriving Redis' own OOM rule, and would miss
    READONLY and MISCONF.)
    """
    try:
        await redis.set(keys.ready_probe, b"1", px=60_000)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        return 503, _not_ready(exc, "redis is unreachable")
    except OutOfMemoryError as exc:
        return 503, _not_ready(exc, "redis refuses writes: maxmemory reached (noeviction)")
    except RedisError as exc:
        return 503, _not_ready(exc, "redis refuses writes")
    return 200, {"status": "ok", "redis": "ok"}


def _not_ready(exc: BaseException, reason: str) -> dict[str, str]:
    # The class name only: a Redis error's text may quote the command and its arguments.
    return {"status": "unavailable", "redis": type(exc).__name__, "reason": reason}


def metrics_response(registry: CollectorRegistry) -> web.Response:
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
