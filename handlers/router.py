"""Maps event names to async handlers: `@router.on("call.completed")`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from handlers.context import Context

ANY = "*"
HandlerFunc = Callable[[Any, Context], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Handler:
    name: str  # stable across restarts: completion records are keyed by it
    event: str
    func: HandlerFunc


class Router:
    """An ordered registry of handlers; routers can include other routers."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []

    def on(self, *events: str, name: str | None = None) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register the decorated coroutine for each of `events` (`"*"` means every event)."""
        if not events:
            raise ValueError("name at least one event, or '*'")

        def register(func: HandlerFunc) -> HandlerFunc:
            for event in events:
                self.add(event, func, name=name)
            return func

        return register

    def add(self, event: str, func: HandlerFunc, *, name: str | None = None) -> Handler:
        """Register `func` for `event` without a decorator."""
        base = name or f"{func.__module__}.{func.__qualname__}"
        handler = Handler(name=base if event == ANY else f"{base}@{event}", event=event, func=func)
        if any(h.name == handler.name for h in self._handlers):
            raise ValueError(f"handler {handler.name!r} is registered twice")
        self._handlers.append(handler)
        return handler

    def include(self, other: Router) -> None:
        """Add every handler of `other` (used to merge user and built-in routers)."""
        for handler in other.handlers:
            if not any(h.name == handler.name for h in self._handlers):
                self._handlers.append(handler)

    @property
    def handlers(self) -> list[Handler]:
        return list(self._handlers)

    def handlers_for(self, event: str) -> list[Handler]:
        """Handlers for `event`, in registration order, `*` handlers included."""
        return [h for h in self._handlers if h.event == event or h.event == ANY]
