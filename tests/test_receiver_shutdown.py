"""SIGTERM to the receiver: in-flight requests finish, new connections are refused."""

from __future__ import annotations

import asyncio
import signal

import pytest

from ringez_worker import signature
from ringez_worker.sandbox.redis_server import free_port
from tests.conftest import SECRET, event_body, wait_for
from tests.processes import Proc, wait_for_port

PATH = "/webhooks/ringez"


async def test_sigterm_lets_an_in_flight_request_finish_and_refuses_new_ones(
    redis_url, redis_client
):
    port = free_port()
    proc = Proc(
        "serve", env={"REDIS_URL": redis_url, "RINGEZ_WEBHOOK_SECRET": SECRET, "PORT": str(port)}
    )
    try:
        wait_for_port(port)
        body = event_body(call_id="in-flight")
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{signature.HEADER}: {signature.sign(body, SECRET)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        # Hold Redis writes, so the request is in flight (waiting on its enqueue) at SIGTERM.
        await redis_client.client_pause(3000, all=False)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body)
        await writer.drain()

        async def enqueue_waiting() -> bool:
            return (await redis_client.info("clients"))["blocked_clients"] >= 1

        await wait_for(enqueue_waiting, what="the request to wait on Redis")
        proc.popen.send_signal(signal.SIGTERM)

        async def refused() -> bool:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return True
            w.close()
            return False

        await wait_for(refused, what="new connections to be refused")
        async with asyncio.timeout(10):
            status_line = await reader.readline()
        writer.close()
        assert b" 202 " in status_line
        assert await redis_client.zcard("ringez:queue") == 1
        # It exits by itself once the request is answered.
        code = await asyncio.to_thread(proc.popen.wait, 30)
        assert code == 0, proc.output()[-2000:]
    finally:
        proc.stop()


pytestmark = pytest.mark.timeout(60)
