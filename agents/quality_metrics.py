"""Prometheus series of the quality monitor, in a registry the runtime passes in (no
global registry): MOS, packet loss and latency histograms, breaches by level, and a gauge
saying whether the budget floor holds polling back."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class QualityMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.mos = Histogram(
            "ringez_quality_mos",
            "MOS per poll",
            buckets=(1, 2, 2.5, 3, 3.5, 4, 4.5, 5),
            registry=registry,
        )
        self.packet_loss = Histogram(
            "ringez_quality_packet_loss",
            "Packet loss (fraction) per poll",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
            registry=registry,
        )
        self.latency = Histogram(
            "ringez_quality_latency_ms",
            "Latency (ms) per poll",
            buckets=(50, 100, 150, 200, 300, 500, 1000),
            registry=registry,
        )
        self.breaches = Counter(
            "ringez_quality_breaches",
            "Breaches, once per call per level",
            ["level"],
            registry=registry,
        )
        self.budget_floor = Gauge(
            "ringez_quality_budget_floor",
            "1 while the API budget floor holds polling back",
            registry=registry,
        )
