"""The worker's /healthz, /readyz and /metrics live through a Redis outage and after it."""

from __future__ import annotations

import aiohttp

from ringez_worker.sandbox.redis_server import RedisServer, free_port
from tests.conftest import wait_for
from tests.processes import Proc


async def get(http: aiohttp.ClientSession, url: str) -> int:
    # A short timeout: before the fix the port stayed bound on an abandoned loop, so a
    # request was accepted and never answered.
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
        await resp.read()
        return resp.status


async def test_health_server_survives_a_redis_outage():
    server = RedisServer(appendonly=True).start()
    port = free_port()
    env = {
        "REDIS_URL": server.url,
        "WORKER_METRICS_PORT": str(port),
        "HOST": "127.0.0.1",
        "RINGEZ_API_KEY": "",
        "RETRY_BACKOFF_SECONDS": "0.05",
    }
    proc = Proc("worker", env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            proc.wait_for_line("worker.started")
            assert await get(http, f"{base}/healthz") == 200
            assert await get(http, f"{base}/readyz") == 200

            server.kill()
            proc.wait_for_line("worker.redis_lost")
            assert await get(http, f"{base}/healthz") == 200
            assert await get(http, f"{base}/readyz") == 503

            server.start()

            def restarted() -> bool:
                return sum("worker.started" in line for line in proc.lines) >= 2

            await wait_for(restarted, deadline_s=60, what="the worker to restart")
            assert await get(http, f"{base}/healthz") == 200
            assert await get(http, f"{base}/metrics") == 200

            async def ready() -> bool:
                return await get(http, f"{base}/readyz") == 200

            await wait_for(ready, what="/readyz to say ready again")
        assert "metrics_port_unavailable" not in proc.output()
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]
        server.cleanup()
