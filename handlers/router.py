"""Maps event names to async handlers: `@router.on("call.completed")`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ringez_worker.handlers.context import Context
from ringez_worker.jobs import TASK_PREFIX

ANY = "*"
HandlerFunc = Callable[[Any, Context], Awaitable[Any]]
# (event, intent detection result, context), for the support agent's detected intents.
IntentFunc = Callable[[Any, Any, Context], Awaitable[Any]]
# (the worker's Redis client, its Settings), once per worker start.
StartupFunc = Callable[[Any, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Handler:
    name: str  # stable across restarts: completion records are keyed by it
    event: str
    func: HandlerFunc


class Router:
    """An ordered registry of handlers; routers can include other routers."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._intents: dict[str, list[IntentFunc]] = {}
        self._startup: list[StartupFunc] = []
        # handlers_for's answers, per (event, task) and registry size (the worker asks
        # for every job; registrations happen at start-up).
        self._routes: dict[tuple[str, bool, int], tuple[Handler, ...]] = {}

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

    def on_task(self, *tasks: str, name: str | None = None) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register the decorated coroutine for tasks the service gives itself
        (`ringez_worker.jobs.schedule_task(redis, keys, "quality.check", {...})`): scheduled
        or internal jobs, run with a webhook's retries, leases and completion records."""
        if not tasks:
            raise ValueError("name at least one task")
        return self.on(*(TASK_PREFIX + t for t in tasks), name=name)

    def on_intent(self, *intents: str) -> Callable[[IntentFunc], IntentFunc]:
        """Register `func(event, intent, ctx)` for intents the support agent detects."""
        if not intents:
            raise ValueError("name at least one intent")

        def register(func: IntentFunc) -> IntentFunc:
            for intent in intents:
                if func not in self._intents.setdefault(intent, []):
                    self._intents[intent].append(func)
            return func

        return register

    def on_startup(self, func: StartupFunc) -> StartupFunc:
        """Run `func(redis, settings)` each time a worker starts, before it takes jobs
        (loading a file into Redis, queueing a first task). A failure is logged and the
        worker starts anyway."""
        if func not in self._startup:
            self._startup.append(func)
        return func

    @property
    def startup_hooks(self) -> list[StartupFunc]:
        return list(self._startup)

    def intent_handlers(self, intent: str) -> list[IntentFunc]:
        return list(self._intents.get(intent, []))

    def include(self, other: Router) -> None:
        """Add every handler of `other` (used to merge user and built-in routers)."""
        for handler in other.handlers:
            if not any(h.name == handler.name for h in self._handlers):
                self._handlers.append(handler)
        for intent, funcs in other._intents.items():
            for func in funcs:
                self.on_intent(intent)(func)
        for hook in other._startup:
            self.on_startup(hook)

    @property
    def handlers(self) -> list[Handler]:
        return list(self._handlers)

    def handlers_for(self, event: str, *, task: bool = False) -> list[Handler]:
        """Handlers for `event`, in registration order, `*` handlers included; with `task`,
        the handlers of that task only. A webhook never reaches a task handler, whatever
        its event name says."""
        key = (event, task, len(self._handlers))
        found = self._routes.get(key)
        if found is None:
            if len(self._routes) > 1024:
                self._routes.clear()  # event names come from senders: keep it bounded
            found = self._routes[key] = tuple(self._find(event, task))
        return list(found)

    def _find(self, event: str, task: bool) -> list[Handler]:
        if task:
            return [h for h in self._handlers if h.event == event] if _is_task(event) else []
        if _is_task(event):
            return [h for h in self._handlers if h.event == ANY]
        return [h for h in self._handlers if h.event == event or h.event == ANY]


def _is_task(event: str) -> bool:
    return event.startswith(TASK_PREFIX)
