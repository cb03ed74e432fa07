"""Finds user handlers: module paths from settings and the `ringez_worker.handlers` entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ringez_worker.handlers.router import Router

ENTRY_POINT_GROUP = "ringez_worker.handlers"


class HandlerLoadError(Exception):
    """A configured handler module or entry point could not be loaded."""


def _router_of(obj: object, origin: str) -> Router:
    if isinstance(obj, Router):
        return obj
    found = getattr(obj, "router", None)
    if isinstance(found, Router):
        return found
    if callable(obj):
        router = Router()
        obj(router)
        return router
    raise HandlerLoadError(
        f"{origin}: expected a Router, a module with a `router` attribute, "
        "or a function that takes a Router"
    )


def load_router(modules: list[str], *, use_entry_points: bool = True) -> Router:
    """A Router holding every handler from `modules` and the entry-point group."""
    router = Router()
    for path in modules:
        module_name, _, attr = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise HandlerLoadError(f"cannot import handler module {module_name!r}: {exc}") from exc
        router.include(_router_of(getattr(module, attr) if attr else module, path))
    if use_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except Exception as exc:
                raise HandlerLoadError(f"entry point {ep.name!r} failed to load: {exc}") from exc
            router.include(_router_of(loaded, f"entry point {ep.name!r}"))
    return router
