"""Prometheus series of the outbound campaigns, in the registry the runtime passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CampaignMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dialed = Counter(
            "ringez_campaign_calls_dialed",
            "Campaign calls placed (one per contact attempt)",
            ["campaign"],
            registry=registry,
        )
        self.answered = Counter(
            "ringez_campaign_calls_answered",
            "Campaign calls answered",
            ["campaign"],
            registry=registry,
        )
        self.completed = Counter(
            "ringez_campaign_calls_completed",
            "Campaign calls that ended after an answer",
            ["campaign"],
            registry=registry,
        )
        self.failed = Counter(
            "ringez_campaign_calls_failed",
            "Campaign calls that ended unanswered (busy, no answer, failed)",
            ["campaign"],
            registry=registry,
        )
        self.spend = Counter(
            "ringez_campaign_spend",
            "What campaign calls cost, from call.completed, in the campaign's currency",
            ["campaign"],
            registry=registry,
        )
        self.live = Gauge(
            "ringez_campaign_live_calls",
            "Campaign calls claimed or connected now",
            ["campaign"],
            registry=registry,
        )
