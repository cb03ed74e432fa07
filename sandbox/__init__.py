"""A local Ringez: the REST API on in-memory state, and signed webhooks for named scenarios.

running = await start_sandbox(SandboxConfig(receiver_url=...))
run = start_scenario(running.sandbox, "angry")
"""

if __name__ != "ringez_worker.sandbox":  # the folder maps into the namespace (pyproject.toml)
    raise ImportError(
        f"import ringez_worker.sandbox, not {__name__}: this folder is installed as "
        "ringez_worker.sandbox, and a second name would load a second copy of its modules"
    )

from ringez_worker.sandbox.app import (
    RunningSandbox,
    create_sandbox_app,
    run_sandbox,
    serve_sandbox,
    start_sandbox,
)
from ringez_worker.sandbox.config import (
    ANSWERS,
    BUSY,
    NO_ANSWER,
    EmitterConfig,
    FaultConfig,
    RouteConfig,
    SandboxConfig,
    config_from_settings,
)
from ringez_worker.sandbox.emitter import Delivery, WebhookEmitter, event_body
from ringez_worker.sandbox.engine import EmittedEvent, Sandbox
from ringez_worker.sandbox.keys import REQUEST_LOG, SANDBOX, SCENARIO_RUNS
from ringez_worker.sandbox.scenarios import SCENARIOS, ScenarioRun, play_scenario, start_scenario

__all__ = [
    "ANSWERS",
    "BUSY",
    "NO_ANSWER",
    "REQUEST_LOG",
    "SANDBOX",
    "SCENARIOS",
    "SCENARIO_RUNS",
    "Delivery",
    "EmittedEvent",
    "EmitterConfig",
    "FaultConfig",
    "RouteConfig",
    "RunningSandbox",
    "Sandbox",
    "SandboxConfig",
    "ScenarioRun",
    "WebhookEmitter",
    "config_from_settings",
    "create_sandbox_app",
    "event_body",
    "play_scenario",
    "run_sandbox",
    "serve_sandbox",
    "start_sandbox",
    "start_scenario",
]
