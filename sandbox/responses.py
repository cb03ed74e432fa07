"""JSON in and out for the sandbox's handlers, with Ringez's error shape."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ringez_worker.sandbox.models import SandboxError


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """`{"error": {"code", "message"}}`, the contract's error body."""
    return json_response({"error": {"code": code, "message": message}}, status, headers)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is `{}`."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SandboxError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise SandboxError(400, "invalid_body", "the body must be a JSON object")
    return body


def opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise SandboxError(400, "invalid_field", f"{name} must be a string")
    return value


def req_str(body: dict[str, Any], name: str) -> str:
    value = opt_str(body, name)
    if not value:
        raise SandboxError(400, "missing_field", f"{name} is required")
    return value


def opt_dict(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SandboxError(400, "invalid_field", f"{name} must be an object")
    return value


def opt_url(body: dict[str, Any], name: str) -> str | None:
    value = opt_str(body, name)
    if value is not None and not value.startswith(("http://", "https://")):
        raise SandboxError(400, "invalid_url", f"{name} must be an http(s) URL")
    return value


def opt_number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise SandboxError(400, "invalid_field", f"{name} must be a number from {low} to {high}")
    return float(value)


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SandboxError(400, "invalid_query", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise SandboxError(400, "invalid_query", f"{name} must be from {low} to {high}")
    return value
