"""`ringez-worker serve`: the receiver app on a listening socket, webhooks on the socket lane.

aiohttp's `run_app` would serve every request through aiohttp; this starts the same app's
runner and puts `WebhookSite` on the port instead of aiohttp's TCP site, so webhook POSTs
take the lane (`webhook_protocol.py`) and everything else reaches the app as before. With
tracing on, aiohttp serves everything: the server span is made by the aiohttp handler.
"""

from __future__ import annotations

import asyncio
import signal
import socket

from aiohttp import web

from ringez_worker.settings import Settings
from ringez_worker.tracing import TRACING
from ringez_worker.worker.receiver import INTAKE
from ringez_worker.worker.webhook_protocol import WebhookLane


class WebhookSite(web.SockSite):
    """aiohttp's socket site with the webhook lane in front of the runner's protocol."""

    def __init__(
        self, runner: web.AppRunner, sock: socket.socket, settings: Settings, grace: float
    ) -> None:
        super().__init__(runner, sock)
        self._settings = settings
        self._grace = grace
        self.lane: WebhookLane | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; SockSite.start would serve aiohttp
        server = self._runner.server
        assert server is not None
        app = self._runner.app  # type: ignore[attr-defined]
        self.lane = WebhookLane(
            app[INTAKE],
            self._settings.webhook_path,
            server,
            self._settings.body_read_timeout_seconds,
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.lane, sock=self._sock, backlog=self._backlog)

    async def stop(self) -> None:
        await super().stop()  # no new connections
        if self.lane is not None:
            await self.lane.shutdown(self._grace)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR, as aiohttp's site sets it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def start_receiver(
    app: web.Application,
    sock: socket.socket,
    settings: Settings,
    shutdown_timeout: float | None = None,
) -> web.AppRunner:
    """Set the app up and serve it on `sock`; `await runner.cleanup()` stops it gracefully
    (in-flight requests get `shutdown_timeout`, default SHUTDOWN_GRACE_SECONDS)."""
    grace = settings.shutdown_grace_seconds if shutdown_timeout is None else shutdown_timeout
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace)
    await runner.setup()
    site: web.BaseSite
    site = web.SockSite(runner, sock) if TRACING.on else WebhookSite(runner, sock, settings, grace)
    await site.start()
    return runner


def run_receiver(app: web.Application, settings: Settings, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests and stop."""

    async def main() -> None:
        runner = await start_receiver(app, listen(host, port), settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
