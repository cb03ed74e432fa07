"""API answers are read up to RINGEZ_MAX_RESPONSE_BYTES and no further: over it the
request fails at once with ResponseTooLarge, whether the size is declared or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ringez_worker.api import ResponseTooLarge, RingezClient
from tests.conftest import make_settings

CAP = 64 * 1024
CHUNK = b" " * 16 * 1024


async def declared(request: web.Request) -> web.Response:
    size = int(request.query.get("size", "0"))
    return web.Response(body=b"{" + b'"a":1' + b" " * size + b"}", content_type="application/json")


async def streamed(request: web.Request) -> web.StreamResponse:
    # No Content-Length: only counting while reading can stop this one.
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        await resp.write(b'{"a":1')
        for _ in range(int(request.query.get("chunks", "0"))):
            await resp.write(CHUNK)
        await resp.write(b"}")
        await resp.write_eof()
    except ConnectionError:
        pass  # the client stopped reading, as it should
    return resp


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/api/v1/calls/declared", declared)
    app.router.add_get("/api/v1/calls/streamed", streamed)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/api/v1"))
    await server.close()


def client(base_url: str) -> RingezClient:
    return RingezClient(base_url, "sk_test_cap", "agent", max_response_bytes=CAP, max_attempts=1)


async def test_answers_under_the_cap_are_read(base_url: str) -> None:
    async with client(base_url) as c:
        assert await c.request("GET", "/calls/declared", params={"size": CAP - 100}) == {"a": 1}
        assert await c.request("GET", "/calls/streamed", params={"chunks": 3}) == {"a": 1}


async def test_a_declared_size_over_the_cap_fails_before_reading(base_url: str) -> None:
    async with client(base_url) as c:
        with pytest.raises(ResponseTooLarge, match="RINGEZ_MAX_RESPONSE_BYTES") as info:
            await c.request("GET", "/calls/declared", params={"size": CAP + 1})
    assert info.value.status == 200 and info.value.retryable is False


async def test_a_streamed_answer_over_the_cap_fails_while_reading(base_url: str) -> None:
    async with client(base_url) as c:
        with pytest.raises(ResponseTooLarge):
            # 48 MiB if read to the end.
            await c.request("GET", "/calls/streamed", params={"chunks": 3072})


def test_the_cap_comes_from_the_settings(redis_url: str) -> None:
    settings = make_settings(
        redis_url, ringez_api_key="sk_test_cap", ringez_max_response_bytes=123456
    )
    ringez = RingezClient.from_settings(settings)
    assert ringez._transport.max_response_bytes == 123456
