"""RingezClient: the async Ringez API client the agents use."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
from pydantic import SecretStr

from ringez_worker.api.priority import Priority, default_priority
from ringez_worker.api.ratelimit import RateLimiter, RedisRateLimiter
from ringez_worker.api.resources import (
    Agents,
    Analytics,
    Batch,
    Calls,
    Sessions,
    Transcripts,
    Wallet,
    Webhooks,
)
from ringez_worker.api.retry import RetryPolicy
from ringez_worker.api.transport import DEFAULT_MAX_RESPONSE_BYTES, HttpTransport
from ringez_worker.settings import Settings, require

if TYPE_CHECKING:
    from redis.asyncio import Redis


class RingezClient:
    """Async client for the Ringez API: one per process, shared by every handler.

    Use as `async with RingezClient(...) as client:` or call `await client.aclose()`;
    either closes the aiohttp session only if the client created it.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        agent_id: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_attempts: int = 4,
        backoff_base: float = 0.25,
        backoff_cap: float = 8.0,
        max_retry_after: float = 30.0,
        rate_limiter: RateLimiter | None = None,
        session_id: str | None = None,
    ) -> None:
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        transport = HttpTransport(
            base_url,
            key,
            session=session,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            retry=RetryPolicy(
                max_attempts=max_attempts,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
                max_retry_after=max_retry_after,
            ),
            rate_limiter=rate_limiter,
        )
        self._bind(transport, agent_id, session_id, owns_transport=True, priority=None)

    def _bind(
        self,
        transport: HttpTransport,
        agent_id: str,
        session_id: str | None,
        owns_transport: bool,
        priority: Priority | None,
    ) -> None:
        if not agent_id:
            raise ValueError("agent_id must not be empty")
        self._transport = transport
        self._owns_transport = owns_transport
        self.agent_id = agent_id
        self.session_id = session_id
        self.priority = priority
        self.sessions = Sessions(self)
        self.wallet = Wallet(self)
        self.calls = Calls(self)
        self.batch = Batch(self)
        self.transcripts = Transcripts(self)
        self.agents = Agents(self)
        self.analytics = Analytics(self)
        self.webhooks = Webhooks(self)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        redis: Redis | None = None,
        session: aiohttp.ClientSession | None = None,
        rate_limit: int | None = None,
        rate_period: float | None = None,
        rate_max_wait: float = 60.0,
    ) -> RingezClient:
        """A client from RINGEZ_API_URL / RINGEZ_API_KEY / RINGEZ_AGENT_ID.

        With `redis`, requests share a per-API-key budget (`rate_limit` per `rate_period`
        seconds; RINGEZ_RATE_LIMIT / RINGEZ_RATE_PERIOD_SECONDS, the standard tier by
        default) with every other process using that Redis.
        """
        require(settings, "ringez_api_key")
        api_key = settings.ringez_api_key
        assert api_key is not None  # require() checked it
        limiter = None
        if redis is not None:
            limiter = RedisRateLimiter.for_api_key(
                redis,
                api_key,
                prefix=settings.key_prefix,
                limit=rate_limit or settings.ringez_rate_limit,
                period=rate_period or settings.ringez_rate_period_seconds,
                max_wait=rate_max_wait,
                reserve_live=settings.ringez_rate_reserve_live,
            )
        return cls(
            settings.ringez_api_url,
            api_key,
            settings.ringez_agent_id,
            session=session,
            timeout=settings.ringez_timeout_seconds,
            max_response_bytes=settings.ringez_max_response_bytes,
            rate_limiter=limiter,
        )

    def with_session_id(self, session_id: str | None) -> RingezClient:
        """A view of this client sending `X-Session-ID: session_id`; shares its HTTP session.

        Closing the view does nothing; close the original client.
        """
        return self._view(session_id, self.priority)

    def with_priority(self, priority: Priority | None) -> RingezClient:
        """A view of this client whose requests all spend the budget class `priority`
        (None: each endpoint's default class, api/priority.py); shares its HTTP session."""
        return self._view(self.session_id, priority)

    def _view(self, session_id: str | None, priority: Priority | None) -> RingezClient:
        view = object.__new__(type(self))
        view._bind(self._transport, self.agent_id, session_id, False, priority)
        return view

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def rate_limiter(self) -> RateLimiter | None:
        return self._transport.rate_limiter

    def __repr__(self) -> str:
        return (
            f"RingezClient(base_url={self.base_url!r}, agent_id={self.agent_id!r}, "
            f"session_id={self.session_id!r})"
        )

    def _headers(self) -> dict[str, str]:
        headers = {"X-Agent-ID": self.agent_id}
        if self.session_id:
            headers["X-Session-ID"] = self.session_id
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        attempts: int | None = None,
    ) -> dict[str, Any]:
        """Send any request (path relative to the base URL) with auth and retries; its JSON.

        Pass `idempotent=False` for requests that must not run twice and carry no
        idempotency key: they are retried only when they surely did not run."""
        return await self._transport.request(
            method,
            path,
            headers=self._headers(),
            json=json,
            params=params,
            idempotent=idempotent,
            attempts=attempts,
            priority=self.priority if self.priority is not None else default_priority(method, path),
        )

    async def aclose(self) -> None:
        """Release the HTTP session if this client created it."""
        if self._owns_transport:
            await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
