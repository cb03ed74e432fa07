"""A stand-in OTLP/HTTP collector for bench/ingest.py's `ringez-otel` design: reads each
export request whole and answers 200, so the receiver pays the real exporter's cost
(protobuf encoding, an HTTP POST per batch) with nothing behind it."""

from __future__ import annotations

import argparse

from aiohttp import web

_stats = {"requests": 0, "bytes": 0}


async def export(request: web.Request) -> web.Response:
    body = await request.read()
    _stats["requests"] += 1
    _stats["bytes"] += len(body)
    return web.Response(status=200, content_type="application/x-protobuf", body=b"")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(_stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
