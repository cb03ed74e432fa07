"""Built-in agents that act on events through the Ringez API.

They are wired through the same Router users register their handlers on.
"""

from __future__ import annotations

if __name__ != "ringez_worker.agents":  # the folder maps into the namespace (pyproject.toml)
    raise ImportError(
        f"import ringez_worker.agents, not {__name__}: this folder is installed as "
        "ringez_worker.agents, and a second name would load a second copy of its modules"
    )

from prometheus_client import CollectorRegistry

from ringez_worker.agents.config import AgentSettings
from ringez_worker.agents.escalation import EscalationAgent
from ringez_worker.agents.quality import QualityAgent
from ringez_worker.agents.quality_metrics import QualityMetrics
from ringez_worker.agents.recharge import RechargeAgent
from ringez_worker.agents.support import SupportAgent
from ringez_worker.handlers.router import Router

__all__ = [
    "AgentSettings",
    "EscalationAgent",
    "QualityAgent",
    "RechargeAgent",
    "SupportAgent",
    "build_agents",
]


def build_agents(
    config: AgentSettings,
    intents: Router | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> tuple[Router, list[object]]:
    """A Router with the enabled agents' handlers, and the agent objects themselves.

    `intents`: a Router whose `on_intent` handlers the support agent should call.
    `registry`: where agents with metrics of their own register them (the worker's
    /metrics registry); None: not exported."""
    router = Router()
    agents: list[object] = []
    escalation = EscalationAgent(config) if config.enabled("escalation") else None
    if escalation is not None:
        escalation.register(router)
        agents.append(escalation)
    if config.enabled("support"):
        support = SupportAgent(config, escalation, intents)
        support.register(router)
        agents.append(support)
    if config.enabled("recharge"):
        recharge = RechargeAgent(config)
        recharge.register(router)
        agents.append(recharge)
    if config.enabled("quality"):
        metrics = QualityMetrics(registry) if registry is not None else None
        quality = QualityAgent(config, metrics)
        quality.register(router)
        agents.append(quality)
    return router, agents
