"""Redis clients built from settings: bounded pools, timeouts, retry on reconnect.

With a Sentinel URL (see `ringez_worker.redis_url`) both clients ask the Sentinels where the
master is, and again after a failover.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from ringez_worker.redis_url import is_sentinel_url, parse_sentinel_url, url_password
from ringez_worker.settings import Settings


class NotReplicated(RedisError):
    """Fewer replicas than asked for confirmed a write in time (REDIS_WAIT_REPLICAS: the
    web process answers 503, so the sender retries instead of trusting a lost write)."""


def _retry() -> Retry:
    # Two quick retries ride over a dropped pooled connection after a Redis restart (or a
    # Sentinel failover); a Redis that stays away still fails fast so the receiver can
    # answer 503.
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), 2)


def redis_from_settings(settings: Settings) -> Redis:
    """An asyncio Redis client with a bounded pool (found through Sentinel when asked)."""
    timeouts: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "retry": _retry(),
        "retry_on_error": [ConnectionError, TimeoutError],
    }
    if is_sentinel_url(settings.redis_url):
        sentinel, master = _sentinel(settings.redis_url, **timeouts)
        # redis-py has no blocking Sentinel pool: this one raises when all are in use.
        return sentinel.master_for(master, max_connections=settings.redis_max_connections)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        **timeouts,
    )
    return Redis.from_pool(pool)


def arq_sentinel_pool(settings: Settings) -> ArqRedis | None:
    """With a Sentinel URL, the worker's arq pool, built here; None: arq builds its own.

    arq's Sentinel mode hands the master's connections only db, username, password and
    ssl, so they had no retry on reconnect: a connection the old master reset during a
    failover (it closes its clients as it turns replica) ended the worker instead of
    asking the Sentinels again (tests/test_sentinel.py failed so under a loaded suite)."""
    if not is_sentinel_url(settings.redis_url):
        return None
    # No socket_timeout, as with arq's own pool: the wake listener's pub/sub reads idle.
    sentinel, master = _sentinel(
        settings.redis_url,
        encoding="utf8",
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=_retry(),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    pool: ArqRedis = sentinel.master_for(master, redis_class=ArqRedis)
    return pool


def _sentinel(url: str, **connection: Any) -> tuple[Sentinel, str]:
    """The Sentinels of a `redis+sentinel://` URL and the master's name; `connection`
    and the URL's credentials go to the master's connections. The Sentinels themselves
    get redis-py's default socket timeouts, not the master's password."""
    target = parse_sentinel_url(url)
    sentinel = Sentinel(
        target.hosts,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.ssl,
        **connection,
    )
    return sentinel, target.master


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """The same Redis, described the way arq wants it (arq's own Sentinel support included)."""
    if is_sentinel_url(settings.redis_url):
        target = parse_sentinel_url(settings.redis_url)
        rs = RedisSettings(
            host=target.hosts,
            sentinel=True,
            sentinel_master=target.master,
            database=target.db,
            username=target.username,
            password=target.password,
            ssl=target.ssl,
        )
    else:
        rs = RedisSettings.from_dsn(settings.redis_url)
        # from_dsn neither unquotes the password (`p%40ss`) nor reads `?password=`;
        # redis-py does both, and the two clients must log in alike.
        rs.password = url_password(settings.redis_url)
        if rs.ssl:
            _tls_options(rs, settings.redis_url)
    rs.conn_timeout = max(1, int(settings.redis_timeout_seconds))
    rs.conn_retries = 5
    rs.conn_retry_delay = 1
    # Not max_connections: arq's pool raises instead of waiting, and max_jobs already bounds it.
    rs.retry = _retry()
    rs.retry_on_error = [ConnectionError, TimeoutError]
    return rs


def _tls_options(rs: RedisSettings, url: str) -> None:
    # redis-py reads these from a rediss:// URL's query; arq's from_dsn drops them, so
    # a private CA or client certificate would work for the receiver and not the worker.
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
        if name in query:
            setattr(rs, name, query[name])
    if "ssl_check_hostname" in query:
        rs.ssl_check_hostname = query["ssl_check_hostname"].lower() in ("1", "true", "yes")
