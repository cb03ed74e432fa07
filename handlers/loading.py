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
        try:
            obj(router)
        except Exception as exc:
            raise HandlerLoadError(
                f"{origin}: {type(exc).__name__} raised while registering handlers"
            ) from exc
        return router
    raise HandlerLoadError(
        f"{origin}: expected a Router, a module with a `router` attribute, "
        "or a function that takes a Router"
    )


def _reason(exc: BaseException) -> str:
    """Why an import failed, in one line and without the exception's own text (user code
    may put a value, even a secret, in it): a missing module by name, else the type."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"no module named {exc.name!r}"
    if isinstance(exc, SyntaxError):
        return f"SyntaxError in {exc.filename or 'the module'} at line {exc.lineno}"
    return f"{type(exc).__name__} raised while importing it"


def load_router(modules: list[str], *, use_entry_points: bool = True) -> Router:
    """A Router holding every handler from `modules` and the entry-point group.

    Any failure (an import error, a module raising at import, a syntax error, a missing
    attribute) is a HandlerLoadError naming the module, so start-up fails in one line.
    """
    router = Router()
    for path in modules:
        module_name, _, attr = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise HandlerLoadError(
                f"RINGEZ_HANDLERS: cannot import handler module {module_name!r}: {_reason(exc)}"
            ) from exc
        if attr and not hasattr(module, attr):
            raise HandlerLoadError(
                f"RINGEZ_HANDLERS: handler module {module_name!r} has no attribute {attr!r}"
            )
        origin = f"RINGEZ_HANDLERS: handler module {path!r}"
        router.include(_router_of(getattr(module, attr) if attr else module, origin))
    if use_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except Exception as exc:
                raise HandlerLoadError(
                    f"entry point {ep.name!r} failed to load: {_reason(exc)}"
                ) from exc
            router.include(_router_of(loaded, f"entry point {ep.name!r}"))
    return router
