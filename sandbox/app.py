"""The sandbox's aiohttp app: the Ringez API, the request log, faults, and how to run it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ringez_worker.logs import get_logger
from ringez_worker.sandbox.api import add_api_routes
from ringez_worker.sandbox.config import SandboxConfig
from ringez_worker.sandbox.control import PREFIX, add_control_routes
from ringez_worker.sandbox.engine import Sandbox
from ringez_worker.sandbox.faults import CODES
from ringez_worker.sandbox.keys import REQUEST_LOG, SANDBOX, SCENARIO_RUNS
from ringez_worker.sandbox.models import SandboxError, iso
from ringez_worker.sandbox.responses import error_response

log = get_logger("ringez.sandbox")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TEST_KEY_PREFIX = "sk_test_"


def _log_entry(request: web.Request, raw: bytes, now: float) -> dict[str, Any]:
    try:
        body: Any = orjson.loads(raw) if raw.strip() else None
        text = None
    except orjson.JSONDecodeError:
        body, text = None, raw[:4096].decode(errors="replace")
    return {
        "at": iso(now),
        "method": request.method,
        "path": request.path,
        "query": {str(k): v for k, v in request.query.items()},
        # The API key stays out of the log: tests read it and may print it.
        "headers": {str(k): v for k, v in request.headers.items() if k.lower() != "authorization"},
        "json": body,
        "text": text,
        "status": None,
        "fault": None,
    }


def _check_auth(request: web.Request, config: SandboxConfig) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise SandboxError(401, "missing_api_key", "send Authorization: Bearer sk_test_...")
    if scheme.lower() != "bearer" or not key.strip():
        raise SandboxError(401, "invalid_api_key", "the Authorization header must be Bearer <key>")
    key = key.strip()
    if not key.startswith(TEST_KEY_PREFIX) or len(key) == len(TEST_KEY_PREFIX):
        raise SandboxError(401, "invalid_api_key", "the sandbox takes only sk_test_ keys")
    if config.api_keys is not None and key not in config.api_keys:
        raise SandboxError(401, "invalid_api_key", "unknown API key")
    if config.require_agent_id and not request.headers.get("X-Agent-ID"):
        raise SandboxError(400, "missing_agent_id", "send an X-Agent-ID header")


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log every request, then inject a fault or check the key, then turn errors into JSON."""
    app = request.app
    sb = app[SANDBOX]
    entry = _log_entry(request, await request.read(), sb.state.now())
    requests = app[REQUEST_LOG]
    # Reading the log must not add to it.
    if not (request.method == "GET" and request.path == f"{PREFIX}/requests"):
        requests.append(entry)
        del requests[: max(0, len(requests) - sb.config.request_log_limit)]
    try:
        fault = sb.faults.decide(request.path)
        if fault is not None:
            entry["fault"] = fault
            response: web.StreamResponse = error_response(
                fault,
                CODES.get(fault, "injected_fault"),
                "injected by the sandbox",
                sb.faults.headers(fault),
            )
        else:
            if request.path.startswith(sb.config.base_path + "/"):
                _check_auth(request, sb.config)
            response = await handler(request)
    except SandboxError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.headers or None)
    except web.HTTPException as exc:
        # aiohttp's own 404/405 in the contract's shape.
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        code = "not_found" if exc.status == 404 else f"http_{exc.status}"
        response = error_response(exc.status, code, exc.reason, headers or None)
    except Exception:
        log.exception("sandbox.handler_failed", method=request.method, path=request.path)
        response = error_response(500, "internal_error", "the sandbox failed; see its log")
    entry["status"] = response.status
    return response


def create_sandbox_app(config: SandboxConfig | None = None) -> web.Application:
    """The sandbox: the Ringez API under `config.base_path`, steering under `/_sandbox`."""
    config = config or SandboxConfig()
    app = web.Application(middlewares=[_middleware])
    app[SANDBOX] = Sandbox(config)
    app[REQUEST_LOG] = []
    app[SCENARIO_RUNS] = []
    add_api_routes(app, config.base_path.rstrip("/"))
    add_control_routes(app)
    app.on_cleanup.append(_close)
    return app


async def _close(app: web.Application) -> None:
    await app[SANDBOX].aclose()


@dataclass
class RunningSandbox:
    """A sandbox serving on a socket: `url` is its root, `api_url` the Ringez base URL."""

    app: web.Application
    runner: web.AppRunner
    url: str

    @property
    def sandbox(self) -> Sandbox:
        return self.app[SANDBOX]

    @property
    def api_url(self) -> str:
        return self.url + self.sandbox.config.base_path.rstrip("/")

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_sandbox(
    config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningSandbox:
    """Serve a sandbox on host:port (0: a free port) and return once it accepts connections."""
    app = create_sandbox_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    if bound_host in ("0.0.0.0", "::"):
        # Listening everywhere; clients on this machine reach it on loopback.
        bound_host = "127.0.0.1"
    elif ":" in bound_host:
        bound_host = f"[{bound_host}]"
    running = RunningSandbox(app=app, runner=runner, url=f"http://{bound_host}:{bound_port}")
    log.info("sandbox.started", url=running.url, api_url=running.api_url)
    return running


async def run_sandbox(config: SandboxConfig | None, host: str, port: int) -> None:
    """Serve a sandbox until cancelled."""
    running = await start_sandbox(config, host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await running.close()


@contextlib.asynccontextmanager
async def serve_sandbox(
    config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSandbox]:
    """`async with serve_sandbox(config) as sb:` a served sandbox, closed on exit."""
    running = await start_sandbox(config, host, port)
    try:
        yield running
    finally:
        await running.close()
