"""HTTP to the Ringez API: one aiohttp session, auth headers, retries, rate limiting, logs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from ringez_worker.api import trace
from ringez_worker.api.errors import (
    NOT_EXECUTED_STATUSES,
    InvalidResponse,
    RateLimited,
    ResponseTooLarge,
    RingezError,
    RingezUnavailable,
    error_for_status,
)
from ringez_worker.api.priority import Priority
from ringez_worker.api.ratelimit import RateLimiter
from ringez_worker.api.retry import RETRY_STATUSES, RetryPolicy, parse_retry_after
from ringez_worker.logs import REDACTED, REDACTOR, get_logger
from ringez_worker.tracing import TRACING

log = get_logger("ringez.api")

# No answer came back: safe to send again (POSTs that create carry an idempotency key).
_TRANSPORT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)
_MAX_ERROR_TEXT = 2048
# Every API answer is a small JSON object; a far larger one is a fault, never to be
# buffered whole (a 48 MiB answer took a worker from 68 to 162 MiB).
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024
_NO_SPAN = contextlib.nullcontext()


class HttpTransport:
    """Sends requests to one base URL with one API key; owns its session only if it made it."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        user_agent: str = "ringez-agent-worker",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        if not api_key.get_secret_value():
            raise ValueError("api_key must not be empty")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_response_bytes = max_response_bytes
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter
        self._user_agent = user_agent

    def __repr__(self) -> str:
        return f"HttpTransport(base_url={self.base_url!r})"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            # Made lazily so the client can be built outside a running event loop.
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session if this transport created it; a borrowed one stays open."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        attempts: int | None = None,
        priority: Priority = Priority.LIVE,
    ) -> dict[str, Any]:
        """Send one logical request, retrying what may succeed later; the JSON object answer.

        `attempts` overrides the retry policy's number of tries (1: no retries here, for a
        caller that retries on its own terms). `priority` is the budget class each attempt
        spends (api/priority.py).

        `idempotent=False` (call actions such as a transfer, which carry no idempotency
        key) retries only when the request surely did not run: no connection was made,
        or a 429/503 answer. Anything else fails at once with `maybe_executed` set.

        Raises a RingezError subclass for an error status, RingezUnavailable when no answer
        came back after every attempt, InvalidResponse for a 2xx that is not a JSON object.
        """
        url = self.base_url + path
        data = orjson.dumps(dict(json)) if json is not None else None
        query = _query(params)
        all_headers = {
            "Accept": "application/json",
            "User-Agent": self._user_agent,
            **(headers or {}),
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
        }
        if data is not None:
            all_headers["Content-Type"] = "application/json"

        policy = self.retry if attempts is None else replace(self.retry, max_attempts=attempts)
        for attempt in range(1, policy.max_attempts + 1):
            if self.rate_limiter is not None:
                await self.rate_limiter.acquire(priority)
            # Tracing on: a CLIENT span per attempt, its traceparent sent along.
            with _attempt_span(method, url, path, attempt) as span:
                send_headers = all_headers if span is None else _traced(all_headers)
                started = time.perf_counter()
                try:
                    async with self._get_session().request(
                        method,
                        url,
                        data=data,
                        params=query,
                        headers=send_headers,
                        timeout=self._timeout,
                        # A redirect would carry the bearer token to wherever it points.
                        allow_redirects=False,
                    ) as resp:
                        raw = await self._read_capped(resp, method, path)
                        status = resp.status
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                except _TRANSPORT_ERRORS as exc:
                    duration_ms = _ms(started)
                    trace.record(method, path, 0, duration_ms)
                    unsent = isinstance(exc, aiohttp.ClientConnectorError)
                    last = attempt == policy.max_attempts or (not idempotent and not unsent)
                    pause = 0.0 if last else policy.backoff(attempt)
                    log.warning(
                        "ringez.request.failed",
                        method=method,
                        path=path,
                        attempt=attempt,
                        error=type(exc).__name__,
                        duration_ms=duration_ms,
                        retry_in_s=None if last else round(pause, 3),
                    )
                    if last:
                        if span is not None:
                            _result(span, None, type(exc).__name__, None)
                        unavailable = RingezUnavailable(
                            f"no answer from {method} {path} after {attempt} attempts "
                            f"({type(exc).__name__})",
                            method=method,
                            path=path,
                        )
                        unavailable.maybe_executed = not unsent
                        raise unavailable from exc
                    if span is not None:
                        _result(span, None, type(exc).__name__, "no_answer")
                    wait = pause
                else:
                    duration_ms = _ms(started)
                    if 200 <= status < 300:
                        log.info(
                            "ringez.request",
                            method=method,
                            path=path,
                            status=status,
                            attempt=attempt,
                            duration_ms=duration_ms,
                        )
                        if span is not None:
                            _result(span, status, None, None)
                        answer = self._decode_ok(raw, status, method, path)
                        trace.record(method, path, status, duration_ms, answer)
                        return answer

                    trace.record(method, path, status, duration_ms)
                    error = error_for_status(
                        status,
                        self._decode_error(raw),
                        method=method,
                        path=path,
                        retry_after=retry_after,
                    )
                    if (
                        isinstance(error, RateLimited)
                        and (retry_after or 0) > self.retry.max_retry_after
                    ):
                        await self._pause(retry_after, f"{status} from {method} {path}", priority)
                    delay = self._retry_delay(
                        error, status, attempt, retry_after, policy.max_attempts
                    )
                    if status >= 500 and status not in NOT_EXECUTED_STATUSES:
                        error.maybe_executed = True
                        if not idempotent:
                            delay = None
                    log.warning(
                        "ringez.request",
                        method=method,
                        path=path,
                        status=status,
                        attempt=attempt,
                        duration_ms=duration_ms,
                        error=type(error).__name__,
                        retry_in_s=None if delay is None else round(delay, 3),
                    )
                    if span is not None:
                        reason = None if delay is None else f"status_{status}"
                        _result(span, status, type(error).__name__, reason)
                    if delay is None:
                        raise error
                    wait = delay
            # Outside the span: the attempt is over, the pause is not part of it.
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _pause(self, seconds: float | None, reason: str, priority: Priority) -> None:
        # A wait longer than this request sleeps through is about the account, not the
        # request: every handler and worker sharing the limiter waits too (or defers its
        # job) instead of collecting 429s of its own. A short one is slept through here,
        # as before; pausing everyone for it too stalled live calls (the chaos run's
        # angry callers hung up waiting for their transfer).
        # A 429 on a dial pauses dialing only: the contract's per-session
        # `calls_per_hour` answers dials that way, and an account pause for it held every
        # live transfer for the hour (bench/callback_chaos.py at 300 requests). Were it
        # the account's budget instead, the next request of another class meets its own
        # 429 and pauses the account.
        if seconds is None:
            return
        pause = getattr(self.rate_limiter, "pause", None)
        if pause is not None:
            await pause(seconds, reason, Priority.DIAL if priority is Priority.DIAL else None)

    async def _read_capped(self, resp: aiohttp.ClientResponse, method: str, path: str) -> bytes:
        """The answer's body, refused as soon as it is known to exceed the cap: from
        Content-Length before reading, else while reading it chunk by chunk."""
        cap = self.max_response_bytes
        declared = resp.content_length
        if declared is not None and declared > cap:
            raise self._too_large(resp.status, method, path)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > cap:
                raise self._too_large(resp.status, method, path)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, status: int, method: str, path: str) -> ResponseTooLarge:
        error = ResponseTooLarge(
            f"{status} from {method} {path}: answer over {self.max_response_bytes} bytes "
            "(RINGEZ_MAX_RESPONSE_BYTES)",
            status=status,
            method=method,
            path=path,
        )
        error.maybe_executed = 200 <= status < 300
        log.warning(
            "ringez.response_too_large",
            method=method,
            path=path,
            status=status,
            limit=self.max_response_bytes,
        )
        return error

    def _retry_delay(
        self,
        error: RingezError,
        status: int,
        attempt: int,
        retry_after: float | None,
        max_attempts: int,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to raise `error` now."""
        if status not in RETRY_STATUSES or attempt >= max_attempts:
            return None
        if isinstance(error, RateLimited) and retry_after is not None:
            # Honour the server's wait; one longer than we are willing to sleep goes up to
            # the caller (the job queue can defer the job) instead of being cut short.
            return retry_after if retry_after <= self.retry.max_retry_after else None
        return self.retry.backoff(attempt)

    def _scrubbed_text(self, raw: bytes) -> str:
        # An error page echoing the request headers must not smuggle the key into an error,
        # nor one echoing the request body any other secret (a payment token).
        text = raw.decode("utf-8", errors="replace")
        return REDACTOR.scrub(text.replace(self._api_key.get_secret_value(), REDACTED))

    def _decode_error(self, raw: bytes) -> Any:
        text = self._scrubbed_text(raw)
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text[:_MAX_ERROR_TEXT] or None

    def _decode_ok(self, raw: bytes, status: int, method: str, path: str) -> dict[str, Any]:
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise InvalidResponse(
                f"{status} from {method} {path} is not a JSON object",
                status=status,
                body=self._scrubbed_text(raw)[:_MAX_ERROR_TEXT],
                method=method,
                path=path,
            )
        return body


def _attempt_span(method: str, url: str, path: str, attempt: int) -> Any:
    """A context manager: the attempt's CLIENT span with tracing on, else None (no cost)."""
    if not TRACING.on:
        return _NO_SPAN
    from ringez_worker import tracing_otel

    return tracing_otel.client_span(method, url, path, attempt)


def _traced(headers: dict[str, str]) -> dict[str, str]:
    from ringez_worker import tracing_otel

    out = dict(headers)
    tracing_otel.inject(out)
    return out


def _result(span: Any, status: int | None, error: str | None, retry_reason: str | None) -> None:
    from ringez_worker import tracing_otel

    tracing_otel.client_result(span, status, error, retry_reason)


def _query(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for name, value in params.items():
        if value is None:
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out or None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
