"""Sign and POST webhooks as Ringez does, redelivering the same bytes until a 2xx."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from ringez_worker import signature
from ringez_worker.logs import get_logger
from ringez_worker.sandbox.config import EmitterConfig

log = get_logger("ringez.sandbox.emitter")


def event_body(event: str, data: dict[str, Any], timestamp: str | None = None) -> bytes:
    """The raw body of a webhook: `{"event", "timestamp", "data"}`, as Ringez serialises it."""
    stamp = timestamp or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps({"event": event, "timestamp": stamp, "data": data})


@dataclass
class Attempt:
    number: int
    status: int | None  # None: no answer (timeout or connection error)
    error: str | None
    elapsed_ms: float


@dataclass
class Delivery:
    """One delivery of one body to one URL, with every attempt it took."""

    event: str
    url: str
    body: bytes
    signature: str
    duplicate: bool = False
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return any(a.status is not None and 200 <= a.status < 300 for a in self.attempts)

    @property
    def delivery_id(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def view(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "url": self.url,
            "delivery_id": self.delivery_id,
            "duplicate": self.duplicate,
            "delivered": self.delivered,
            "attempts": [vars(a) for a in self.attempts],
        }


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("Retry-After", ""))
    except ValueError:
        return None


class WebhookEmitter:
    """Delivers signed webhooks; `deliveries` records every one, in order."""

    def __init__(
        self,
        config: EmitterConfig,
        secret: str,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self._session = session
        self._owns_session = session is None

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def emit(
        self, url: str, event: str, data: dict[str, Any], *, secret: str | None = None
    ) -> list[Delivery]:
        """Build, sign and deliver one event."""
        return await self.send(url, event_body(event, data), secret=secret)

    async def send(self, url: str, body: bytes, *, secret: str | None = None) -> list[Delivery]:
        """Deliver `body` (twice when `config.duplicate`); never raises on a failed delivery."""
        event = str(orjson.loads(body).get("event", ""))
        copies = 2 if self.config.duplicate else 1
        return [
            await self._deliver(url, event, body, secret or self.secret, duplicate=n > 0)
            for n in range(copies)
        ]

    async def _deliver(
        self, url: str, event: str, body: bytes, secret: str, *, duplicate: bool
    ) -> Delivery:
        cfg = self.config
        sig = signature.sign(body, secret)
        delivery = Delivery(event=event, url=url, body=body, signature=sig, duplicate=duplicate)
        self.deliveries.append(delivery)
        headers = {"Content-Type": "application/json", signature.HEADER: sig}
        client = await self._client()
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_seconds)
        for number in range(1, max(1, cfg.max_attempts) + 1):
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            retry_after: float | None = None
            try:
                async with client.post(url, data=body, headers=headers, timeout=timeout) as resp:
                    await resp.read()
                    status = resp.status
                    retry_after = _retry_after(resp.headers)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                error = type(exc).__name__
            elapsed = round((time.monotonic() - started) * 1000, 2)
            delivery.attempts.append(Attempt(number, status, error, elapsed))
            if status is not None and 200 <= status < 300:
                log.info(
                    "sandbox.webhook.delivered",
                    webhook_event=event,
                    status=status,
                    attempts=number,
                    duplicate=duplicate,
                )
                return delivery
            if number < cfg.max_attempts:
                delay = min(cfg.backoff_max_seconds, cfg.backoff_seconds * 2 ** (number - 1))
                if retry_after is not None:
                    delay = min(cfg.backoff_max_seconds, max(delay, retry_after))
                await asyncio.sleep(delay)
        log.warning(
            "sandbox.webhook.gave_up",
            webhook_event=event,
            url=url,
            attempts=len(delivery.attempts),
            last_status=delivery.attempts[-1].status,
            last_error=delivery.attempts[-1].error,
        )
        return delivery

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None
