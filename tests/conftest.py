"""Fixtures: a real Redis-compatible server on a free loopback port, settings, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from yarl import URL

from ringez_worker import signature
from ringez_worker.handlers.router import Router
from ringez_worker.sandbox.redis_server import RedisServer
from ringez_worker.settings import Settings, load_settings
from ringez_worker.worker.app import create_worker
from ringez_worker.worker.cli import build_event
from ringez_worker.worker.receiver import create_app
from ringez_worker.worker.serve import listen, start_receiver

SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


def make_settings(redis_url: str, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "_env_file": None,
        "redis_url": redis_url,
        "ringez_webhook_secret": f"{SECRET},{OLD_SECRET}",
        "ringez_api_key": "sk_test_not_a_real_key",
        "retry_backoff_seconds": 0.01,
        "retry_backoff_max_seconds": 0.05,
        "worker_poll_delay_seconds": 0.05,
        "load_entry_points": False,
        "log_format": "json",
        "worker_metrics_port": 0,
    }
    base.update(overrides)
    return load_settings(**base)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class ServeTestServer(TestServer):
    """aiohttp's TestServer serving the app as `ringez-worker serve` does: webhook POSTs
    on the socket lane (worker/webhook_protocol.py), everything else through aiohttp."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app)
        self._settings = settings

    async def start_server(self, loop: object = None, **kwargs: object) -> None:
        if self.runner:
            return
        sock = listen("127.0.0.1", 0)
        self.runner = await start_receiver(self.app, sock, self._settings, shutdown_timeout=5)
        self.host, self.port = sock.getsockname()[:2]
        self.scheme = "http"
        self._root = URL(f"http://127.0.0.1:{self.port}")


@contextlib.asynccontextmanager
async def serve_receiver(settings: Settings, way: str = "lane") -> AsyncIterator[TestClient]:
    """A client of the receiver: served as `ringez-worker serve` serves it (`lane`), or on
    aiohttp's own server (`aiohttp`: what `create_app` gives an embedding program, and what
    serves webhooks with tracing on)."""
    app = create_app(settings)
    if way == "lane":
        server: TestServer = ServeTestServer(app, settings)
        await server.start_server()
    else:
        server = TestServer(app)
        # Every request has been answered by teardown; aiohttp's default 60 s shutdown
        # timeout (applied twice, graceful then cancel) once held a full suite's teardown
        # of the 2,000-request flood test for 120 s under load, although each answer had
        # arrived.
        await server.start_server(shutdown_timeout=5)
    client = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def receiver(settings: Settings) -> AsyncIterator[TestClient]:
    async with serve_receiver(settings) as client:
        yield client


def signed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", signature.HEADER: signature.sign(body, secret)}


def event_body(event: str = "call.completed", **data: object) -> bytes:
    payload = {"call_id": "call_1", "session_id": "sess_1", **data}
    return build_event(event, payload)


async def wait_for(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    deadline_s: float = 10.0,
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Wait until `condition()` is true, failing the test after `deadline_s` seconds."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, router: Router, **overrides: object):
    """A RingezWorker running in this event loop until the block exits."""
    worker = create_worker(settings, router=router, handle_signals=False, **overrides)
    task = asyncio.create_task(worker.main())
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
