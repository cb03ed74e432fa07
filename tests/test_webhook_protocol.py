"""The socket lane over raw TCP: keep-alive, pipelining, the hand-over to aiohttp, limits,
timeouts. Real Redis; `receiver` serves as `ringez-worker serve` does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp.test_utils import TestClient

from ringez_worker import signature
from ringez_worker.settings import Settings
from ringez_worker.worker.envelope import delivery_id
from ringez_worker.worker.webhook_protocol import MAX_HEAD_BYTES
from tests.conftest import SECRET, event_body, make_settings, serve_receiver, wait_for

PATH = "/webhooks/ringez"
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def webhook(body: bytes, *, extra: str = "", version: str = "1.1") -> bytes:
    return (
        f"POST {PATH} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{signature.HEADER}: {signature.sign(body, SECRET)}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(10):
        status_line = await reader.readline()
        assert status_line, "the connection closed before an answer"
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """The server closed: an end of stream, or a reset (bytes it did not read were left)."""
    async with asyncio.timeout(10):
        try:
            return await reader.read(1) == b""
        except ConnectionResetError:
            return True


@pytest.fixture
async def conn(receiver: TestClient) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.server.port)
    yield reader, writer
    writer.close()


async def test_webhooks_on_one_kept_alive_connection_are_answered_in_turn(conn, redis_client):
    reader, writer = conn
    for i in range(3):
        body = event_body(call_id=f"keep_{i}")
        writer.write(webhook(body))
        status, headers, answer = await read_response(reader)
        assert status == 202
        assert orjson.loads(answer) == {"received": True, "id": delivery_id(body)}
        assert headers["content-type"] == "application/json"
        assert "connection" not in headers
    assert await redis_client.zcard("ringez:queue") == 3


async def test_pipelined_webhooks_are_answered_in_request_order(conn, redis_client):
    reader, writer = conn
    bodies = [event_body(call_id=f"pipe_{i}") for i in range(40)]
    bodies.append(bodies[3])  # a redelivery inside the same write: 200 duplicate
    writer.write(b"".join(webhook(b) for b in bodies))
    answers = [await read_response(reader) for _ in bodies]
    assert [orjson.loads(a[2])["id"] for a in answers] == [delivery_id(b) for b in bodies]
    assert [a[0] for a in answers] == [202] * 40 + [200]
    assert await redis_client.zcard("ringez:queue") == 40


async def test_a_connection_that_starts_with_another_request_is_aiohttps(conn):
    reader, writer = conn
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 200
    assert orjson.loads(body)["status"] == "ok"
    # Once aiohttp's, webhooks on it are served by aiohttp (same answers).
    payload = event_body(call_id="after_health")
    writer.write(webhook(payload))
    status, _, _ = await read_response(reader)
    assert status == 202


async def test_another_request_after_webhooks_is_handed_to_aiohttp(conn):
    reader, writer = conn
    writer.write(webhook(event_body(call_id="before_handoff")))
    assert (await read_response(reader))[0] == 202
    writer.write(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, headers, body = await read_response(reader)
    assert (status, headers["allow"]) == (405, "POST")
    assert orjson.loads(body)["error"] == "method_not_allowed"
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 200 and b"ringez_webhooks_received_total" in body


async def test_a_request_pipelined_behind_a_webhook_closes_the_connection_after_its_answer(
    conn, redis_client
):
    """Its offset in the read is unknown, so it cannot be handed over: the webhook is
    answered, then the connection closes, and the client resends the GET (RFC 9112 9.3.2)."""
    reader, writer = conn
    body = event_body(call_id="then_get")
    writer.write(webhook(body) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 202
    assert await closed(reader)
    assert await redis_client.zcard("ringez:queue") == 1


async def test_expect_100_continue_gets_its_interim_answer(conn):
    reader, writer = conn
    body = event_body(call_id="expect")
    head, _, payload = webhook(body, extra="Expect: 100-continue\r\n").partition(b"\r\n\r\n")
    writer.write(head + b"\r\n\r\n")
    async with asyncio.timeout(10):
        assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert await reader.readline() == b"\r\n"
    writer.write(payload)
    assert (await read_response(reader))[0] == 202


async def test_a_chunked_body_is_verified_as_its_bytes(conn, redis_client):
    reader, writer = conn
    body = event_body(call_id="chunked")
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{signature.HEADER}: {signature.sign(body, SECRET)}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]))
    writer.write(head + chunks + b"0\r\n\r\n")
    assert (await read_response(reader))[0] == 202
    assert await redis_client.zcard("ringez:queue") == 1


async def test_http_1_0_is_answered_and_closed(conn):
    reader, writer = conn
    writer.write(webhook(event_body(call_id="old"), version="1.0"))
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (202, "close")
    assert await closed(reader)


async def test_a_body_over_the_limit_is_413_and_closes(redis_url, redis_client):
    settings = make_settings(redis_url, max_body_bytes=1024)
    async with serve_receiver(settings) as client:
        # Declared too large: answered before the body is read.
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\n{signature.HEADER}: {'a' * 64}\r\n"
            "Content-Length: 999999\r\n\r\n".encode()
        )
        status, _, body = await read_response(reader)
        assert (status, orjson.loads(body)["error"]) == (413, "body_too_large")
        assert await closed(reader)
        writer.close()
        # Chunked past the limit: answered as the limit is crossed.
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(
            f"POST {PATH} HTTP/1.1\r\nHost: x\r\n{signature.HEADER}: {'a' * 64}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + b"%x\r\n%s\r\n" % (2000, b"x" * 2000)
        )
        assert (await read_response(reader))[0] == 413
        assert await closed(reader)
        writer.close()
    assert await redis_client.zcard("ringez:queue") == 0


async def test_headers_that_never_end_are_431(conn):
    reader, writer = conn
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nX-Long: ".encode())
    # Sent in reads of their own, as a slow sender would; then nothing (more would meet a
    # closed socket: a reset).
    for _ in range(MAX_HEAD_BYTES // 4096 + 1):
        writer.write(b"a" * 4096)
        await writer.drain()
        await asyncio.sleep(0)
    status, _, body = await read_response(reader)
    assert (status, orjson.loads(body)["error"]) == (431, "headers_too_large")
    assert await closed(reader)


async def test_a_request_that_is_not_http_is_400(conn):
    reader, writer = conn
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n".encode())
    status, _, body = await read_response(reader)
    assert (status, orjson.loads(body)["error"]) == (400, "bad_request")
    assert await closed(reader)


async def test_a_stalled_body_is_408(redis_url, redis_client):
    settings = make_settings(redis_url, body_read_timeout_seconds=0.5)
    async with serve_receiver(settings) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        body = event_body(call_id="stalled")
        writer.write(webhook(body)[:-10])  # the last 10 bytes never come
        status, _, answer = await read_response(reader)
        assert (status, orjson.loads(answer)["error"]) == (408, "body_timeout")
        assert await closed(reader)
        writer.close()
    assert await redis_client.zcard("ringez:queue") == 0


async def test_an_answer_owed_to_a_client_that_left_is_dropped_and_the_event_kept(
    receiver, redis_client
):
    await redis_client.client_pause(500, all=False)  # the enqueue waits on Redis
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.server.port)
    writer.write(webhook(event_body(call_id="left")))
    await writer.drain()
    writer.close()

    async def queued() -> bool:
        return await redis_client.zcard("ringez:queue") == 1

    await wait_for(queued, what="the webhook of a client that left to be queued")
    # The receiver still serves others.
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.server.port)
    writer.write(webhook(event_body(call_id="next")))
    assert (await read_response(reader))[0] == 202
    writer.close()


async def test_redis_down_is_503_with_retry_after_on_the_lane(redis_url):
    settings: Settings = make_settings("redis://127.0.0.1:1/0")
    async with serve_receiver(settings) as client:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(webhook(event_body(call_id="no_redis")))
        status, headers, body = await read_response(reader)
        assert (status, orjson.loads(body)["error"]) == (503, "queue_unavailable")
        assert headers["retry-after"] == str(settings.retry_after_seconds)
        writer.close()
