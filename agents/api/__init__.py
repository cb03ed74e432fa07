"""Async client for the Ringez API: retries, typed errors, a Redis-shared rate limit."""

from agents.api.client import RingezClient
from agents.api.errors import (
    BadRequest,
    Forbidden,
    InsufficientBalance,
    InvalidResponse,
    NotFound,
    RateLimited,
    RateLimitWaitExceeded,
    RingezError,
    RingezUnavailable,
    ServerError,
    Unauthorized,
)
from agents.api.models import BatchCall, CallSettings, UserConsent
from agents.api.ratelimit import RateLimiter, RedisRateLimiter
from agents.api.retry import RetryPolicy

__all__ = [
    "BadRequest",
    "BatchCall",
    "CallSettings",
    "Forbidden",
    "InsufficientBalance",
    "InvalidResponse",
    "NotFound",
    "RateLimitWaitExceeded",
    "RateLimited",
    "RateLimiter",
    "RedisRateLimiter",
    "RetryPolicy",
    "RingezClient",
    "RingezError",
    "RingezUnavailable",
    "ServerError",
    "Unauthorized",
    "UserConsent",
]
