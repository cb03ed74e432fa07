"""Async client for the Ringez API: retries, typed errors, a Redis-shared rate limit."""

from ringez_worker.api.client import RingezClient
from ringez_worker.api.errors import (
    BadRequest,
    Forbidden,
    InsufficientBalance,
    InvalidId,
    InvalidResponse,
    NotFound,
    RateLimited,
    RateLimitWaitExceeded,
    ResponseTooLarge,
    RingezError,
    RingezUnavailable,
    ServerError,
    Unauthorized,
)
from ringez_worker.api.models import BatchCall, CallSettings, UserConsent
from ringez_worker.api.priority import Priority
from ringez_worker.api.ratelimit import RateLimiter, RedisRateLimiter
from ringez_worker.api.retry import RetryPolicy

__all__ = [
    "BadRequest",
    "BatchCall",
    "CallSettings",
    "Forbidden",
    "InsufficientBalance",
    "InvalidId",
    "InvalidResponse",
    "NotFound",
    "Priority",
    "RateLimitWaitExceeded",
    "RateLimited",
    "RateLimiter",
    "RedisRateLimiter",
    "ResponseTooLarge",
    "RetryPolicy",
    "RingezClient",
    "RingezError",
    "RingezUnavailable",
    "ServerError",
    "Unauthorized",
    "UserConsent",
]
