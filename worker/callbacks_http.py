"""`POST /callbacks` on the web process: a callback request in, 202 once it is in Redis.

Bearer-token authenticated (CALLBACKS_TOKEN, compared in constant time) and off while
the token is unset. The customer-info hook and the assignment run in the workers; this
only validates and stores. An `Idempotency-Key` header makes a retry the same request.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import orjson
from aiohttp import web
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ringez_worker.agents.callbacks import CallbackRequest, add_callback
from ringez_worker.agents.callbacks.models import field_errors
from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger

log = get_logger("ringez.callbacks")
MAX_BODY_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 200


def _json(status: int, payload: dict, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=headers or None,
    )


def add_callback_routes(
    app: web.Application,
    redis: Callable[[], Redis],
    keys: Keys,
    token: str,
    path: str,
    wait: tuple[int, int] = (0, 1000),
) -> None:
    """Serve `POST path` with `redis()` (the web process's client) and `keys`; `wait`:
    (REDIS_WAIT_REPLICAS, REDIS_WAIT_TIMEOUT_MS), as the webhook receiver waits."""
    expected = f"Bearer {token}".encode()

    async def post(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _json(
                401,
                {"error": "unauthorized", "message": "Authorization: Bearer <CALLBACKS_TOKEN>"},
                **{"WWW-Authenticate": "Bearer"},
            )
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return _json(413, {"error": "too_large", "message": "at most 64 KiB"})
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _json(400, {"error": "invalid_json", "message": "the body is not JSON"})
        if not isinstance(body, dict):
            errors = {"body": "must be a JSON object"}
            return _json(422, {"error": "invalid_request", "errors": errors})
        try:
            model = CallbackRequest(**body)
        except ValidationError as exc:
            return _json(422, {"error": "invalid_request", "errors": field_errors(exc)})
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and not 0 < len(idem) <= MAX_IDEMPOTENCY_KEY:
            errors = {"Idempotency-Key": f"1 to {MAX_IDEMPOTENCY_KEY} characters"}
            return _json(422, {"error": "invalid_request", "errors": errors})
        try:
            added = await add_callback(
                redis(),
                keys,
                model,
                idempotency_key=idem,
                wait_replicas=wait[0],
                wait_timeout_ms=wait[1],
            )
        except (RedisError, OSError) as exc:
            log.warning("callbacks.store_failed", error=type(exc).__name__)
            return _json(
                503, {"error": "unavailable", "message": "try again"}, **{"Retry-After": "1"}
            )
        if added.status == "conflict":
            return _json(
                409,
                {
                    "error": "idempotency_conflict",
                    "message": "this Idempotency-Key was used with another body",
                    "request_id": added.request_id,
                },
            )
        log.info("callbacks.received", request_id=added.request_id, replay=added.status == "same")
        return _json(
            202,
            {
                "request_id": added.request_id,
                "status": "queued",
                "replayed": added.status == "same",
            },
        )

    app.router.add_post(path, post)
