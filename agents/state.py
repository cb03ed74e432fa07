"""Per-call state the agents keep in Redis, under one prefix, each key with a TTL."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CallKeys:
    prefix: str
    call_id: str

    def _k(self, name: str) -> str:
        return f"{self.prefix}:call:{self.call_id}:{name}"

    @property
    def segments(self) -> str:
        return self._k("segments")

    @property
    def live(self) -> str:
        return self._k("live")

    @property
    def intents(self) -> str:
        return self._k("intents")

    @property
    def sentiments(self) -> str:
        return self._k("sentiments")

    @property
    def opened(self) -> str:
        return self._k("opened")

    @property
    def ended(self) -> str:
        return self._k("ended")

    @property
    def escalation(self) -> str:
        return self._k("escalation")

    @property
    def summary(self) -> str:
        return f"{self.prefix}:summary:{self.call_id}"

    def live_state(self) -> list[str]:
        """What the support agent deletes when the call ends."""
        return [self.segments, self.live, self.intents, self.sentiments, self.opened]
