"""A whole stack for agent tests: the sandbox (a local Ringez), the real receiver, and
workers with the built-in agents, all on loopback and a real Redis."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestServer

from ringez_worker.agents import AgentSettings, build_agents
from ringez_worker.sandbox import REQUEST_LOG, RunningSandbox, SandboxConfig, start_sandbox
from ringez_worker.sandbox.config import EmitterConfig
from ringez_worker.settings import Settings
from ringez_worker.worker.receiver import create_app
from tests.conftest import SECRET, make_settings, running_worker

PATH = "/webhooks/ringez"


@dataclass
class Stack:
    settings: Settings
    sandbox: RunningSandbox
    receiver_url: str
    workers: list[Any] = field(default_factory=list)
    config: Any = None  # the AgentSettings the workers run with

    def requests(self, path_suffix: str, **json_match: Any) -> list[dict[str, Any]]:
        """API requests the sandbox received on a path ending with `path_suffix`."""
        found = []
        for entry in self.sandbox.app[REQUEST_LOG]:
            body = entry.get("json") or {}
            if entry["path"].endswith(path_suffix) and all(
                body.get(k) == v for k, v in json_match.items()
            ):
                found.append(entry)
        return found

    def transfers(self, call_id: str) -> list[dict[str, Any]]:
        return self.requests(f"/calls/{call_id}/actions", action="transfer")

    def charges(self, session_id: str) -> list[dict[str, Any]]:
        return self.requests("/wallet/add-credits", session_id=session_id)


@contextlib.asynccontextmanager
async def agent_stack(
    redis_url: str,
    *,
    workers: int = 1,
    duplicate: bool = False,
    agent_config: dict[str, Any] | None = None,
    sandbox_config: dict[str, Any] | None = None,
    intents: Any = None,
    **settings_overrides: Any,
) -> AsyncIterator[Stack]:
    receiver_server = None
    sandbox = await start_sandbox(
        SandboxConfig(
            webhook_secret=SECRET,
            pacing_seconds=0.02,
            escalation_wait_seconds=10,
            emitter=EmitterConfig(backoff_seconds=0.05, duplicate=duplicate),
            **(sandbox_config or {}),
        )
    )
    try:
        settings = make_settings(
            redis_url,
            ringez_api_url=sandbox.api_url,
            ringez_api_key="sk_test_agents",
            **settings_overrides,
        )
        receiver_server = TestServer(create_app(settings))
        await receiver_server.start_server()
        receiver_url = str(receiver_server.make_url(PATH))
        # Calls placed through the API (callbacks) report to this receiver, as Ringez
        # reports to the account's webhook URL.
        if sandbox.sandbox.config.receiver_url is None:
            sandbox.sandbox.config.receiver_url = receiver_url
        # A callable value is resolved against the running sandbox (a session id, say).
        resolved = {k: v(sandbox) if callable(v) else v for k, v in (agent_config or {}).items()}
        config = AgentSettings(_env_file=None, **resolved)
        stack = Stack(settings=settings, sandbox=sandbox, receiver_url=receiver_url, config=config)
        async with contextlib.AsyncExitStack() as stacked:
            for _ in range(workers):
                router, _ = build_agents(config, intents=intents)
                stack.workers.append(
                    await stacked.enter_async_context(running_worker(settings, router))
                )
            yield stack
    finally:
        if receiver_server is not None:
            await receiver_server.close()
        await sandbox.close()


@dataclass
class RuntimeStack:
    """A worker built by the runtime's own wiring (`create_worker(settings)`: agents and
    their metrics from the environment), its receiver and the sandbox."""

    settings: Settings
    sandbox: RunningSandbox
    receiver: TestServer
    metrics_port: int

    async def scrape(self) -> str:
        """The worker's /metrics page."""
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
                return await response.text()


@contextlib.asynccontextmanager
async def runtime_stack(
    redis_url: str,
    monkeypatch: Any,
    *,
    env: Any = None,
    sandbox_config: dict[str, Any] | None = None,
    **settings_overrides: Any,
) -> AsyncIterator[RuntimeStack]:
    """The sandbox, a receiver and one worker as `ringez-worker worker` builds it, with
    its metrics server on a free port. `env`: variables for the worker's agents, or a
    function of the running sandbox returning them (a session id, say), set before the
    worker reads them."""
    import asyncio

    from ringez_worker.sandbox.redis_server import free_port
    from ringez_worker.worker.app import create_worker

    sandbox = await start_sandbox(
        SandboxConfig(webhook_secret=SECRET, pacing_seconds=0.02, **(sandbox_config or {}))
    )
    try:
        for name, value in (env(sandbox) if callable(env) else env or {}).items():
            monkeypatch.setenv(name, value)
        port = free_port()
        settings = make_settings(
            redis_url,
            ringez_api_url=sandbox.api_url,
            ringez_api_key="sk_test_agents",
            worker_metrics_port=port,
            **settings_overrides,
        )
        receiver = TestServer(create_app(settings))
        await receiver.start_server()
        try:
            sandbox.sandbox.config.receiver_url = str(receiver.make_url(PATH))
            worker = create_worker(settings, handle_signals=False)
            task = asyncio.create_task(worker.main())
            try:
                yield RuntimeStack(settings, sandbox, receiver, port)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await worker.close()
        finally:
            await receiver.close()
    finally:
        await sandbox.close()
