"""Redis clients built from settings: bounded pools, timeouts, retry on reconnect."""

from __future__ import annotations

from arq.connections import RedisSettings
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from worker.settings import Settings


def _retry() -> Retry:
    # Two quick retries ride over a dropped pooled connection after a Redis restart;
    # a Redis that stays away still fails fast so the receiver can answer 503.
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), 2)


def redis_from_settings(settings: Settings) -> Redis:
    """An asyncio Redis client with a bounded, blocking pool."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=_retry(),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return Redis.from_pool(pool)


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """The same Redis, described the way arq wants it."""
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_timeout = max(1, int(settings.redis_timeout_seconds))
    rs.conn_retries = 5
    rs.conn_retry_delay = 1
    # Not max_connections: arq's pool raises instead of waiting, and max_jobs already bounds it.
    rs.retry = _retry()
    rs.retry_on_error = [ConnectionError, TimeoutError]
    return rs
