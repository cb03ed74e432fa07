"""Prometheus series of the callback queue, in the registry the runtime passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CallbackMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_length = Gauge(
            "ringez_callbacks_queued", "Callback requests waiting for an agent", registry=registry
        )
        self.oldest_wait = Gauge(
            "ringez_callbacks_oldest_wait_seconds",
            "How long the oldest queued callback request has waited",
            registry=registry,
        )
        self.assignments = Counter(
            "ringez_callbacks_assignments", "Requests assigned to an agent", registry=registry
        )
        self.dials = Counter(
            "ringez_callbacks_dials",
            "Callback calls placed (one per assignment)",
            registry=registry,
        )
        self.finished = Counter(
            "ringez_callbacks_finished",
            "Callback calls ended, by what became of the request",
            ["state"],
            registry=registry,
        )
        self.unservable = Counter(
            "ringez_callbacks_unservable",
            "Requests no agent could serve for CALLBACK_UNSERVABLE_SECONDS",
            registry=registry,
        )
        self.agent_load = Gauge(
            "ringez_callbacks_agent_load",
            "Live callback calls per agent",
            ["agent"],
            registry=registry,
        )
