"""The comparison receivers for bench/ingest.py: "the straightforward design" and a bare ceiling.

straightforward: read the body, verify X-Ringez-Signature (HMAC-SHA256, same code as the
service), then `await arq_pool.enqueue_job("handle_event", ..., _job_id=sha256(body))`
once per request and answer 202 (200 when arq says the job id already exists). No
envelope checks, no metrics, no logging: everything it skips only makes it faster.

bare: read the body and answer 200. The ceiling for one aiohttp process on this machine.

Both run on uvloop when it is installed, as `ringez-worker serve` does.

    python bench/baseline_receiver.py --design straightforward --port 8101 \
        --redis-url redis://127.0.0.1:6379/0
    python bench/baseline_receiver.py --design bare --port 8102
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import SECRET, WEBHOOK_PATH  # noqa: E402
from ringez_worker import signature  # noqa: E402
from ringez_worker.jobs import JOB_FUNCTION, dumps_job  # noqa: E402

POOL = web.AppKey("pool", ArqRedis)
SECRETS = [SECRET.encode()]


async def straightforward(request: web.Request) -> web.Response:
    body = await request.read()
    if not signature.verify(body, request.headers.get(signature.HEADER, ""), SECRETS):
        return web.json_response({"error": "invalid_signature"}, status=401)
    delivery_id = hashlib.sha256(body).hexdigest()
    job = await request.app[POOL].enqueue_job(
        JOB_FUNCTION, delivery_id, body.decode(), int(time.time() * 1000), _job_id=delivery_id
    )
    return web.json_response({"received": True, "id": delivery_id}, status=202 if job else 200)


async def bare(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


def create_app(design: str, redis_url: str) -> web.Application:
    app = web.Application()
    if design == "bare":
        app.router.add_post(WEBHOOK_PATH, bare)
        return app

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        # Same JSON job serializer as the service, so its worker could run these jobs.
        app[POOL] = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=dumps_job)
        yield
        await app[POOL].aclose()

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post(WEBHOOK_PATH, straightforward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--design", choices=("straightforward", "bare"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        create_app(args.design, args.redis_url),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
