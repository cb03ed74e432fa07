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

from ringez_worker.agents.callbacks import CallbackAgent
from ringez_worker.agents.callbacks.agent import callback_call_key
from ringez_worker.agents.callbacks.metrics import CallbackMetrics
from ringez_worker.agents.campaign import CampaignAgent, campaign_call_key
from ringez_worker.agents.campaign.metrics import CampaignMetrics
from ringez_worker.agents.config import AgentSettings
from ringez_worker.agents.escalation import EscalationAgent
from ringez_worker.agents.own_calls import CallMark, leave_own_calls_alone
from ringez_worker.agents.quality import QualityAgent
from ringez_worker.agents.quality_metrics import QualityMetrics
from ringez_worker.agents.recharge import RechargeAgent
from ringez_worker.agents.support import SupportAgent
from ringez_worker.handlers.router import Router

__all__ = [
    "AgentSettings",
    "CallbackAgent",
    "CampaignAgent",
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
    # The support and escalation agents leave the service's own calls alone (callback
    # calls, campaign calls): one guard over every enabled call map.
    live = Router()
    escalation = EscalationAgent(config) if config.enabled("escalation") else None
    if escalation is not None:
        escalation.register(live)
        agents.append(escalation)
    if config.enabled("support"):
        support = SupportAgent(config, escalation, intents)
        support.register(live)
        agents.append(support)
    marks: list[CallMark] = []
    if config.enabled("callbacks"):
        marks.append(callback_call_key)
    if config.enabled("campaigns"):
        marks.append(campaign_call_key)
    router.include(leave_own_calls_alone(live, marks))
    if config.enabled("recharge"):
        recharge = RechargeAgent(config)
        recharge.register(router)
        agents.append(recharge)
    if config.enabled("quality"):
        metrics = QualityMetrics(registry) if registry is not None else None
        quality = QualityAgent(config, metrics)
        quality.register(router)
        agents.append(quality)
    if config.enabled("callbacks"):
        callback_metrics = CallbackMetrics(registry) if registry is not None else None
        callbacks = CallbackAgent(config, callback_metrics)
        callbacks.register(router)
        agents.append(callbacks)
    if config.enabled("campaigns"):
        campaign_metrics = CampaignMetrics(registry) if registry is not None else None
        campaigns = CampaignAgent(config, campaign_metrics)
        campaigns.register(router)
        agents.append(campaigns)
    return router, agents
