"""`/_sandbox/…`: what tests and `ringez-worker dev` use to inspect and steer the sandbox."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from aiohttp import web

from ringez_worker.sandbox.config import EmitterConfig, FaultConfig, RouteConfig
from ringez_worker.sandbox.keys import REQUEST_LOG, SANDBOX, SCENARIO_RUNS
from ringez_worker.sandbox.models import SandboxError
from ringez_worker.sandbox.responses import json_response, read_json
from ringez_worker.sandbox.scenarios import SCENARIOS, UnknownScenario, start_scenario

PREFIX = "/_sandbox"
C = TypeVar("C", EmitterConfig, FaultConfig, RouteConfig)


def _merged(current: C, changes: dict[str, Any]) -> C:
    """`current` with `changes` applied; unknown fields are a 400."""
    names = {f.name for f in dataclasses.fields(current)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise SandboxError(400, "unknown_field", f"unknown fields: {', '.join(unknown)}")
    return dataclasses.replace(current, **changes)


async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def get_requests(request: web.Request) -> web.Response:
    """The request log; `?path_prefix=` filters it."""
    prefix = request.query.get("path_prefix", "")
    log = [e for e in request.app[REQUEST_LOG] if e["path"].startswith(prefix)]
    return json_response({"requests": log})


async def clear_requests(request: web.Request) -> web.Response:
    request.app[REQUEST_LOG].clear()
    return json_response({"cleared": True})


async def get_faults(request: web.Request) -> web.Response:
    return json_response(request.app[SANDBOX].faults.view())


async def set_faults(request: web.Request) -> web.Response:
    """Replace the fault settings; fields left out take their defaults."""
    faults = request.app[SANDBOX].faults
    config = _merged(FaultConfig(), await read_json(request))
    try:
        faults.configure(config)
    except ValueError as exc:
        raise SandboxError(400, "invalid_faults", str(exc)) from None
    return json_response(faults.view())


async def clear_faults(request: web.Request) -> web.Response:
    faults = request.app[SANDBOX].faults
    faults.configure(FaultConfig(path_prefix=faults.config.path_prefix))
    return json_response(faults.view())


async def get_routing(request: web.Request) -> web.Response:
    return json_response(dataclasses.asdict(request.app[SANDBOX].routing))


async def set_routing(request: web.Request) -> web.Response:
    """Change some routing fields, e.g. `{"agent_available": false}`."""
    sb = request.app[SANDBOX]
    routing = _merged(sb.routing, await read_json(request))
    if not isinstance(routing.agent_available, bool) or not isinstance(routing.route_to, str):
        raise SandboxError(400, "invalid_field", "agent_available is a boolean, route_to a string")
    sb.routing = routing
    return json_response(dataclasses.asdict(sb.routing))


async def get_emitter(request: web.Request) -> web.Response:
    return json_response(dataclasses.asdict(request.app[SANDBOX].emitter.config))


async def set_emitter(request: web.Request) -> web.Response:
    """Change some delivery fields, e.g. `{"duplicate": true}`."""
    emitter = request.app[SANDBOX].emitter
    config = _merged(emitter.config, await read_json(request))
    if not isinstance(config.max_attempts, int) or config.max_attempts < 1:
        raise SandboxError(400, "invalid_field", "max_attempts must be a positive integer")
    emitter.config = config
    return json_response(dataclasses.asdict(config))


async def get_events(request: web.Request) -> web.Response:
    """Every event emitted, with its deliveries; `?call_id=` filters."""
    call_id = request.query.get("call_id")
    events = [
        e.view()
        for e in request.app[SANDBOX].events
        if call_id is None or e.data.get("call_id") == call_id
    ]
    return json_response({"events": events})


async def get_deliveries(request: web.Request) -> web.Response:
    return json_response(
        {"deliveries": [d.view() for d in request.app[SANDBOX].emitter.deliveries]}
    )


async def list_scenarios(request: web.Request) -> web.Response:
    return json_response(
        {
            "scenarios": {name: s.description for name, s in SCENARIOS.items()},
            "runs": [run.view() for run in request.app[SCENARIO_RUNS]],
        }
    )


async def run_scenario(request: web.Request) -> web.Response:
    """Start a scenario: `{"receiver_url": ...}` (optional if the sandbox has one)."""
    sb = request.app[SANDBOX]
    body = await read_json(request)
    url = body.get("receiver_url") or sb.config.receiver_url
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise SandboxError(400, "missing_receiver_url", "receiver_url must be an http(s) URL")
    try:
        run = start_scenario(sb, request.match_info["name"], url)
    except UnknownScenario:
        raise SandboxError(404, "scenario_not_found", f"scenarios: {sorted(SCENARIOS)}") from None
    request.app[SCENARIO_RUNS].append(run)
    return json_response(run.view(), status=202)


def add_control_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"{PREFIX}/health", health)
    r.add_get(f"{PREFIX}/requests", get_requests)
    r.add_delete(f"{PREFIX}/requests", clear_requests)
    r.add_get(f"{PREFIX}/faults", get_faults)
    r.add_post(f"{PREFIX}/faults", set_faults)
    r.add_delete(f"{PREFIX}/faults", clear_faults)
    r.add_get(f"{PREFIX}/routing", get_routing)
    r.add_post(f"{PREFIX}/routing", set_routing)
    r.add_get(f"{PREFIX}/emitter", get_emitter)
    r.add_post(f"{PREFIX}/emitter", set_emitter)
    r.add_get(f"{PREFIX}/events", get_events)
    r.add_get(f"{PREFIX}/deliveries", get_deliveries)
    r.add_get(f"{PREFIX}/scenarios", list_scenarios)
    r.add_post(f"{PREFIX}/scenarios/{{name}}", run_scenario)
