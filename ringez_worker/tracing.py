"""OpenTelemetry tracing, optional: on from the standard `OTEL_*` variables, else nothing.

`pip install "ringez-agent-worker[otel]"`, then tracing is on when `OTEL_TRACES_EXPORTER`
(other than `none`) or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, off otherwise. Off, or
without the extra, the hot paths pay one attribute check (`if TRACING.on:`) and
opentelemetry is never imported; every span helper lives in `tracing_otel`, imported
only behind that check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = structlog.get_logger("ringez.tracing")

# Envelope fields (ringez_worker/jobs.py): the producer's W3C trace context, and for a
# replay the original delivery's, which the replay's spans link to.
TRACE_CONTEXT = "tc"
TRACE_LINK = "tl"


class _State:
    """Whether tracing is on, and the tracer when it is (one per process)."""

    __slots__ = ("on", "provider", "tracer")

    def __init__(self) -> None:
        self.on = False
        self.tracer: Any = None
        self.provider: Any = None


TRACING = _State()


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for tracing (the extra may still be missing)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def setup_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on if the environment asks and the extra is installed; once per process."""
    if TRACING.on:
        return True
    env = os.environ if env is None else env
    if not wanted(env):
        return False
    try:
        from ringez_worker import tracing_otel
    except ImportError as exc:
        log.warning(
            "tracing.unavailable",
            reason=f"{type(exc).__name__}: {exc}",
            fix='pip install "ringez-agent-worker[otel]"',
        )
        return False
    provider = tracing_otel.provider_from_env(env)
    tracing_otel.set_global(provider)
    enable(provider, env=env)
    return True


def enable(provider: TracerProvider, *, env: Mapping[str, str] | None = None) -> None:
    """Trace with `provider` (tests pass one with an in-memory exporter)."""
    from ringez_worker import tracing_otel

    TRACING.provider = provider
    TRACING.tracer = provider.get_tracer("ringez_worker")
    tracing_otel.instrument(provider, os.environ if env is None else env)
    TRACING.on = True


def disable() -> None:
    """Back to no tracing: instrumentations removed, the provider flushed."""
    if not TRACING.on:
        return
    from ringez_worker import tracing_otel

    TRACING.on = False
    tracing_otel.uninstrument()
    TRACING.provider.force_flush()
    TRACING.tracer = TRACING.provider = None


def add_trace_ids(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: `trace_id` and `span_id` of the current span, if any.

    Only in the chain when tracing is on (ringez_worker/logs.py)."""
    if TRACING.on:
        from ringez_worker import tracing_otel

        ids = tracing_otel.current_ids()
        if ids is not None:
            event_dict["trace_id"], event_dict["span_id"] = ids
    return event_dict
