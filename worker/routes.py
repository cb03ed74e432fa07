"""The Router a worker runs: the built-in agents and the user's handlers, composed once."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from ringez_worker.agents import AgentSettings, build_agents
from ringez_worker.agents.config import load_agent_settings
from ringez_worker.handlers.loading import load_router
from ringez_worker.handlers.router import Router
from ringez_worker.logs import get_logger
from ringez_worker.settings import Settings

log = get_logger("ringez.worker")


def build_router(
    settings: Settings,
    extra: Router | None = None,
    *,
    agent_settings: AgentSettings | None = None,
    registry: CollectorRegistry | None = None,
) -> Router:
    """Built-in agents (when an API key is set), then user handlers from settings and
    entry points: all through one Router, the agents with no private path. `registry`:
    the worker's /metrics registry, for the agents' own series."""
    router = Router()
    if extra is not None:
        router.include(extra)
    users = load_router(settings.handler_modules, use_entry_points=settings.load_entry_points)
    config = agent_settings if agent_settings is not None else load_agent_settings()
    if settings.ringez_api_key is None:
        if config.agents_enabled.strip():
            log.warning("agents.disabled", why="RINGEZ_API_KEY is not set")
    else:
        router.include(build_agents(config, intents=users, registry=registry)[0])
    router.include(users)
    return router
