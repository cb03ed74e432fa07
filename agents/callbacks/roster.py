"""The roster of human agents: read from a YAML or JSON file, kept in Redis as one version.

Every worker's assignment step reads the roster in Redis (the Lua script does), so all
workers assign against the same one; a worker whose CALLBACK_ROSTER file changed loads
it again (by content hash: a reload of the same roster writes nothing). Live load is kept
apart (`callbacks:load`), so a reload never forgets the calls agents are on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError
from redis.asyncio import Redis

from ringez_worker.agents.callbacks.models import RosterAgent, field_errors
from ringez_worker.agents.callbacks.store import CallbackKeys


class RosterError(ValueError):
    """A roster file that cannot be used; the message names the file and the entry."""


def parse_roster(text: str, source: str = "roster") -> list[RosterAgent]:
    """Agents from YAML or JSON text: a list, or `{"agents": [...]}`."""
    try:
        data: Any = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise RosterError(f"{source}: not YAML or JSON ({type(exc).__name__})") from None
    if isinstance(data, dict):
        data = data.get("agents")
    if not isinstance(data, list):
        raise RosterError(f"{source}: expected a list of agents (or {{agents: [...]}})")
    agents: list[RosterAgent] = []
    seen: set[str] = set()
    for i, entry in enumerate(data, start=1):
        try:
            agent = RosterAgent.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{k}: {v}" for k, v in field_errors(exc).items())
            raise RosterError(f"{source}: agent {i}: {problems}") from None
        if agent.id in seen:
            raise RosterError(f"{source}: agent {i}: id {agent.id!r} appears twice")
        seen.add(agent.id)
        agents.append(agent)
    return agents


def read_roster(path: str | Path) -> list[RosterAgent]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RosterError(
            f"{file}: cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None
    return parse_roster(text, str(file))


def roster_version(agents: list[RosterAgent]) -> str:
    canonical = json.dumps([a.model_dump() for a in agents], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


async def store_roster(redis: Redis, keys: CallbackKeys, agents: list[RosterAgent]) -> bool:
    """Make `agents` the roster in Redis; False when that version is already there."""
    version = roster_version(agents)
    if (await redis.get(keys.roster_version) or b"").decode() == version:
        return False
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.roster)
        if agents:
            pipe.hset(keys.roster, mapping={a.id: orjson.dumps(a.model_dump()) for a in agents})
        pipe.set(keys.roster_version, version)
        await pipe.execute()
    return True


async def load_roster(redis: Redis, keys: CallbackKeys) -> list[dict[str, Any]]:
    """The roster in Redis with each agent's live load, by agent id."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.roster)
        pipe.hgetall(keys.load)
        roster, load = await pipe.execute()
    agents = []
    for raw in roster.values():
        agent = orjson.loads(raw)
        agent["load"] = int(load.get(agent["id"].encode(), 0))
        agents.append(agent)
    return sorted(agents, key=lambda a: a["id"])


class RosterFile:
    """CALLBACK_ROSTER as a worker sees it: loaded into Redis when its mtime changes."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._mtime: float | None = None

    async def refresh(self, redis: Redis, keys: CallbackKeys) -> bool:
        """Load the file if it changed since last time; True if Redis got a new version."""
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        changed = await store_roster(redis, keys, read_roster(self.path))
        self._mtime = mtime
        return changed
