"""Lua scripts run by their SHA: the one way the service runs a script on Redis.

A script is sent once per Redis (`SCRIPT LOAD` on the first `NOSCRIPT`: a new server, a
restart without persistence of the script cache, a failover) and from then on only its
40-byte SHA, instead of `EVAL` sending the whole source on every call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

Arg = str | bytes | int | float


class LuaScript:
    """One Lua script; `await script(redis, keys, args)` runs it atomically."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(
        self, redis: Redis | Pipeline, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        """On a client, an awaitable of the script's reply. On a pipeline, the script is
        queued as EVAL (a pipeline cannot resend one command after NOSCRIPT), and its
        reply comes with the pipeline's."""
        if isinstance(redis, Pipeline):
            return redis.eval(self.source, len(keys), *keys, *args)  # type: ignore[arg-type]
        return self._run(redis, keys, args)

    async def _run(self, redis: Redis, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        # redis-py types EVAL's keys and args as str only, and an async client's reply as
        # `Awaitable[str] | str` (its sync and async clients share the signatures).
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[arg-type,misc]
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[arg-type,misc]

    def command(self, keys: Sequence[Arg], args: Sequence[Arg]) -> tuple[Arg, ...]:
        """The EVALSHA command as a tuple, for callers that pack their own round trip."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def load(self, redis: Redis) -> None:
        """Send the source now (callers that pack EVALSHA themselves, after NOSCRIPT)."""
        await redis.script_load(self.source)
