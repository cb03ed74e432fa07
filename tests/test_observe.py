"""Health, readiness, metrics and `ringez-worker status` move with real traffic."""

from __future__ import annotations

import re

import aiohttp

from ringez_worker.handlers import Context, Event, Router
from ringez_worker.sandbox.redis_server import free_port
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for
from tests.processes import run_cli

PATH = "/webhooks/ringez"


def sample(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_receiver_health_ready_and_metrics(receiver):
    assert (await receiver.get("/healthz")).status == 200
    ready = await receiver.get("/readyz")
    assert ready.status == 200 and (await ready.json())["redis"] == "ok"

    before = await (await receiver.get("/metrics")).text()
    body = event_body("call.answered")
    await receiver.post(PATH, data=body, headers=signed_headers(body))
    await receiver.post(PATH, data=body, headers=signed_headers(body))
    await receiver.post(PATH, data=b"{}", headers={"X-Ringez-Signature": "0" * 64})
    after = await (await receiver.get("/metrics")).text()

    name = "ringez_webhooks_received_total"
    assert (
        sample(after, name, '{event="call.answered"}')
        == sample(before, name, '{event="call.answered"}') + 1
    )
    assert sample(after, "ringez_webhooks_duplicate_total") == 1
    assert sample(after, "ringez_webhooks_rejected_total", '{reason="invalid_signature"}') == 1
    assert sample(after, "ringez_enqueue_seconds_count") == 2


async def test_readyz_is_503_when_redis_is_unreachable():
    from aiohttp.test_utils import TestClient, TestServer

    from ringez_worker.worker.receiver import create_app

    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0", redis_timeout_seconds=0.3)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


async def test_worker_metrics_and_status(receiver, redis_url):
    port = free_port()
    settings = make_settings(redis_url, worker_metrics_port=port, host="127.0.0.1")
    router = Router()
    seen: list[str] = []

    @router.on("call.completed")
    async def ok(event: Event, ctx: Context) -> None:
        seen.append(event.delivery_id)

    async with running_worker(settings, router), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        for i in range(3):
            body = event_body(call_id=f"m{i}")
            await receiver.post(PATH, data=body, headers=signed_headers(body))
        await wait_for(lambda: len(seen) == 3, what="three handler runs")

        async def counted() -> bool:
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            labels = f'{{handler="{__name__}.{ok.__qualname__}@call.completed",outcome="ok"}}'
            return sample(text, "ringez_handler_runs_total", labels) == 3

        await wait_for(counted, what="handler metrics")
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        assert "ringez_queue_depth" in text and "ringez_failed_events 0.0" in text

        status = run_cli("status", env={"REDIS_URL": redis_url})
        assert status.returncode == 0, status.stderr
        assert re.search(r"workers alive\s+1", status.stdout), status.stdout
        assert re.search(r"failed events\s+0", status.stdout)
