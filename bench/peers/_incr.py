"""The one piece of work every engine's job does: one INCR through redis-py.

Imported by the peer modules inside their own venvs (stdlib and redis-py only: no
project code there). The bench polls COUNTER to see how many jobs have run.
"""

from __future__ import annotations

import logging
import os

import redis.asyncio

COUNTER = "bench:incr"
_client: redis.asyncio.Redis | None = None


async def incr() -> None:
    """INCR the counter on a client made once per worker process (in its event loop)."""
    global _client
    if _client is None:
        _client = redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    await _client.incr(COUNTER)


def url() -> str:
    return os.environ["BENCH_REDIS_URL"]


def quiet_logs() -> None:
    """WARNING everywhere, as the project's worker runs in the bench (LOG_LEVEL=WARNING)."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)


def usage(argv: list[str]) -> tuple[str, int]:
    """(`enqueue` or `worker`, job count) from a peer module's command line."""
    if len(argv) < 2 or argv[1] not in ("enqueue", "worker"):
        raise SystemExit(f"usage: {argv[0]} enqueue N | worker")
    return argv[1], int(argv[2]) if len(argv) > 2 else 0


# Enqueue this many jobs concurrently: fast loading without one huge gather.
ENQUEUE_CHUNK = 500
