"""Typed errors for Ringez API failures; none of them ever carries the API key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Answers that say the request was not carried out, so sending it again cannot repeat it.
NOT_EXECUTED_STATUSES = frozenset({429, 503})


class RingezError(Exception):
    """Any failure talking to the Ringez API.

    `status` is the HTTP status (None when no answer came back), `body` the API's JSON error
    body (or its text, truncated), and `retryable` whether trying again later could succeed;
    the worker's dispatcher reads `retryable` to decide between a retry and giving up.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.method = method
        self.path = path
        # True when the request may have been carried out although no success came back
        # (a timeout or a dropped connection after sending, a 500/502/504).
        self.maybe_executed = False

    @property
    def code(self) -> str | None:
        """The API's machine-readable error code, when its body has one."""
        return _error_field(self.body, "code")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r})"


class BadRequest(RingezError):
    """400: the request is malformed; sending it again will not help."""


class Unauthorized(RingezError):
    """401: the API key is missing, wrong or revoked."""


class InsufficientBalance(RingezError):
    """402: the wallet cannot pay for this; add credits first."""


class Forbidden(RingezError):
    """403: the key may not do this."""


class NotFound(RingezError):
    """404: no such session, call or transcript."""


class ResponseTooLarge(RingezError):
    """The answer was larger than RINGEZ_MAX_RESPONSE_BYTES; it was not read to the end.

    Not retryable: the same request would get the same answer. `maybe_executed` is set
    when its status said the request was carried out.
    """


class InvalidId(ValueError):
    """An id that is not one plain path segment (empty, `.`, `..`, a `/`, ...), refused
    before any request: it could only address some other resource."""

    retryable = False  # the same id fails the same way on every try


# 404 codes that say the addressed call or transcript does not exist (as opposed to a
# 404 for a path the API does not serve at all).
NO_SUCH_CALL_CODES = frozenset({"call_not_found", "transcript_not_found"})


class RateLimited(RingezError):
    """429 from the API: try again after `retry_after` seconds (None if it did not say)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, retry_after={self.retry_after!r}, "
            f"message={self.message!r})"
        )


class RateLimitWaitExceeded(RateLimited):
    """The shared rate limiter would make us wait longer than allowed; no request was sent."""


class ServerError(RingezError):
    """5xx: the API failed; the same request may succeed later."""

    retryable = True


class RingezUnavailable(RingezError):
    """No answer at all (connection refused or reset, timeout) after every attempt."""

    retryable = True


class InvalidResponse(RingezError):
    """A 2xx answer whose body is not the JSON object the contract describes."""


_BY_STATUS: dict[int, type[RingezError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: InsufficientBalance,
    403: Forbidden,
    404: NotFound,
    429: RateLimited,
}


def error_for_status(
    status: int,
    body: Any,
    *,
    method: str,
    path: str,
    retry_after: float | None = None,
) -> RingezError:
    """The typed error for an HTTP error status, its message taken from the API's body."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else RingezError
    detail = _error_field(body, "message") or _error_field(body, "code")
    message = f"{status} from {method} {path}" + (f": {detail}" if detail else "")
    if cls is RateLimited:
        return RateLimited(
            message, retry_after=retry_after, status=status, body=body, method=method, path=path
        )
    return cls(message, status=status, body=body, method=method, path=path)


def _error_field(body: Any, name: str) -> str | None:
    # The contract's shape is {"error": {"code", "message"}}; flat bodies and
    # {"error": "text"} also occur in the wild.
    if not isinstance(body, Mapping):
        return None
    inner = body.get("error")
    if isinstance(inner, Mapping) and isinstance(inner.get(name), str):
        return inner[name]
    if isinstance(body.get(name), str):
        return body[name]
    if name == "message" and isinstance(inner, str):
        return inner
    return None
