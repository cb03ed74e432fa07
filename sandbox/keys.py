"""aiohttp app keys of the sandbox app."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ringez_worker.sandbox.engine import Sandbox
from ringez_worker.sandbox.scenarios import ScenarioRun

SANDBOX = web.AppKey("sandbox", Sandbox)
# Every request received, oldest first: dicts of method, path, query, headers, json, status.
REQUEST_LOG = web.AppKey("request_log", list[dict[str, Any]])
SCENARIO_RUNS = web.AppKey("scenario_runs", list[ScenarioRun])
