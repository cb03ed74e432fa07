"""structlog set-up: JSON lines in production, a readable console in a terminal."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import orjson
import structlog

from ringez_worker.tracing import TRACING, add_trace_ids

REDACTED = "[redacted]"
_SENSITIVE_KEYS = ("secret", "api_key", "apikey", "authorization", "password", "token")


class Redactor:
    """A structlog processor that removes secret values from every event dict."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also remove `secrets` from now on (longest first, so no part of one survives)."""
        known = set(self._secrets) | {s for s in secrets if s}
        self._secrets = sorted(known, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        """`value` with every secret replaced, recursing into dicts, lists and tuples."""
        return self._scrub(value)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._scrub_str(value)
        if isinstance(value, dict):
            return {
                k: REDACTED if isinstance(k, str) and _is_sensitive(k) else self._scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self._scrub(v) for v in value)
        if isinstance(value, bytes | bytearray):
            return self._scrub_str(value.decode(errors="replace"))
        if isinstance(value, set | frozenset):
            return [self._scrub(v) for v in value]
        if value is None or isinstance(value, int | float):
            return value
        # Anything else is rendered by orjson (dataclasses, enums) or as str(): a review
        # found a secret inside one written out as it was. Its text decides.
        text = str(value)
        return self._scrub_str(text) if self.finds(text) else value

    def finds(self, text: str) -> bool:
        """Whether any secret occurs in `text`."""
        return any(secret in text for secret in self._secrets)

    def _scrub_str(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        # Runs on every line (one per webhook): key verdicts are cached, plain strings
        # take the short path.
        for key, value in event_dict.items():
            if _is_sensitive(key):
                event_dict[key] = REDACTED
            elif type(value) is str:
                event_dict[key] = self._scrub_str(value)
            elif not isinstance(value, int | float | None):
                event_dict[key] = self._scrub(value)
        return event_dict


# E.164-looking: a plus, a non-zero digit, 6-14 more digits, not inside a longer number.
_PHONE = re.compile(r"(?<!\d)\+[1-9]\d{6,14}(?!\d)")


def mask_phone_numbers(text: str) -> str:
    """`text` with each E.164-looking number cut to its last four digits (`+***0100`)."""
    if "+" not in text:  # almost every value: one C-level scan, no regex
        return text
    return _PHONE.sub(lambda m: "+***" + m[0][-4:], text)


class PhoneMasker:
    """A structlog processor masking phone numbers in every value (LOG_PHONE_NUMBERS=false).

    On the hot path (a line per webhook): a value without a "+" costs one `in` test."""

    def _mask(self, value: Any) -> Any:
        if type(value) is str:
            return mask_phone_numbers(value)
        if isinstance(value, dict):
            return {k: self._mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._mask(v) for v in value)
        return value

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        for key, value in event_dict.items():
            if type(value) is str:
                if "+" in value:
                    event_dict[key] = mask_phone_numbers(value)
            elif not isinstance(value, int | float | None):
                event_dict[key] = self._mask(value)
        return event_dict


# The process's one redactor: every settings object adds its secrets when it is built
# (Settings, AgentSettings), and logs, errors, the failed-events record and metrics all
# scrub through it, so a secret one layer knows cannot leak through another's output.
REDACTOR = Redactor()
_PHONE_MASKER = PhoneMasker()


def register_secrets(secrets: Iterable[str]) -> None:
    """Add secret values to the process's redactor."""
    REDACTOR.add(secrets)


@functools.lru_cache(maxsize=1024)
def _is_sensitive(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SENSITIVE_KEYS)


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: Any = None,
    *,
    phone_numbers: bool = False,
) -> None:
    """Route structlog and the stdlib `logging` (arq, aiohttp) through one renderer.

    Phone numbers are masked to their last four digits unless `phone_numbers`
    (LOG_PHONE_NUMBERS=true)."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if not console and _has_fd(stream):
        # JSON lines for a collector: buffered, so a line costs no write syscall of its own.
        stream = BufferedLines.over(stream)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _iso_timestamp,
    ]
    if TRACING.on:
        # Only then: a line links to its trace by these ids; off, no cost per line.
        pre_chain.append(add_trace_ids)
    # Redaction comes last before rendering, so nothing added later can carry a secret out.
    register_secrets(secrets)
    masker: list[Any] = [] if phone_numbers else [_PHONE_MASKER]
    tail: list[Any] = [structlog.processors.format_exc_info, *masker, REDACTOR]
    # Our own lines skip stdlib logging (they are on the hot path, one per webhook and per
    # handler run): the level is checked at the call, the line rendered once and written.
    structlog.configure(
        processors=[
            *pre_chain,
            *tail,
            renderer
            if console
            else _JsonLines(stream, mask_phones=bool(masker), traced=TRACING.on),
        ],
        logger_factory=lambda *args: _NamedWriteLogger(stream, args[0] if args else "ringez"),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=False,
    )
    # Other libraries' stdlib logging (arq, aiohttp) goes through the same renderer.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log and arq's two lines per job repeat what our own lines say
    # (one per webhook, one per handler run), at a cost the worker feels at 1k+ jobs/s.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("arq.worker").setLevel(max(root.level, logging.WARNING))


class _IsoTimestamp:
    """`timestamp`: UTC ISO 8601 with microseconds, the date part formatted once a second.

    Same text as structlog's `TimeStamper(fmt="iso", utc=True)` at a third of its cost
    (it runs on every line).
    """

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        cached, prefix = self._second
        if cached != second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        event_dict["timestamp"] = f"{prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


_iso_timestamp = _IsoTimestamp()


def _dumps(obj: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _JsonLines(structlog.processors.JSONRenderer):
    """The JSON renderer ending the production chain. It remembers the stream and the
    chain's options, so a `HotLine` can write the same text without running the chain."""

    def __init__(self, stream: Any, *, mask_phones: bool, traced: bool) -> None:
        super().__init__(serializer=_dumps)
        self.stream = stream
        self.mask_phones = mask_phones
        self.traced = traced


# The level names the chain writes as themselves (add_log_level renames aliases such as
# "warn" and "exception").
_LINE_LEVELS = ("debug", "info", "warning", "error", "critical")


class HotLine:
    """One log line written per webhook, as the JSON chain would write it, at a fraction
    of its cost: `line(delivery_id=..., call_id=...)`.

    The receiver's `webhook.accepted` line through structlog cost ~16 us of CPU per
    request in the server at 10k req/s (84 against 65 us at WARNING; bench/README.md
    2026-12-03), a fifth of the receiver's time. This writes the same keys in the same
    order (fields, event, level, logger, timestamp) to the same stream, and sends the
    fields through the same phone masking and redaction when a value or key could need
    them (one scan of the values' joined text decides). Where it could not write the same
    text (console format, tracing on: trace ids; a level turned off) it hands the line to
    the bound logger or drops it, as the chain would. It reads the logging set-up when it
    is made (build it after `configure_logging`, as the app factory does); fields must not
    repeat a bound key, and context variables bound later are not merged.
    """

    def __init__(self, logger: Any, event: str, level: str = "info") -> None:
        if level not in _LINE_LEVELS:
            raise ValueError(f"a hot line's level is one of {', '.join(_LINE_LEVELS)}")
        self._logger = logger
        self._event = event
        self._level = level
        enabled = getattr(logger, "is_enabled_for", None)  # a filtering bound logger's
        self._on = enabled is None or bool(enabled(logging.getLevelNamesMapping()[level.upper()]))
        self._name = getattr(getattr(logger, "_logger", None), "name", None)
        # A bound logger's context; a lazy proxy (not bound yet) has none to read.
        self._context = dict(getattr(logger, "_context", None) or {})
        self._safe_keys: set[str] = set()
        renderer = structlog.get_config()["processors"][-1]
        same_text = (
            isinstance(renderer, _JsonLines)
            and not renderer.traced
            and enabled is not None
            and self._name is not None
            and not structlog.contextvars.get_contextvars()
        )
        self._json = renderer if same_text else None

    def __call__(self, **fields: Any) -> None:
        if not self._on:
            return
        out = self._json
        if out is None or "exc_info" in fields or "stack_info" in fields:
            # The chain formats (and redacts) a traceback; this writes no tracebacks.
            getattr(self._logger, self._level)(self._event, **fields)
            return
        line = {**self._context, **fields} if self._context else fields
        line["event"] = self._event
        line["level"] = self._level
        line["logger"] = self._name
        _iso_timestamp(None, self._level, line)
        if self._needs_scrub(line, out.mask_phones):
            if out.mask_phones:
                line = _PHONE_MASKER(None, self._level, line)
            line = REDACTOR(None, self._level, line)
        out.stream.write(_dumps(line) + "\n")

    def _needs_scrub(self, line: dict[str, Any], mask_phones: bool) -> bool:
        if not self._safe_keys.issuperset(line):
            if any(_is_sensitive(key) for key in line):
                return True
            self._safe_keys.update(line)
        texts = []
        for value in line.values():
            if type(value) is str:
                texts.append(value)
            elif not isinstance(value, int | float | None):
                return True  # nested: the processors walk it
        joined = "\x00".join(texts)
        return (mask_phones and "+" in joined) or REDACTOR.finds(joined)


def _has_fd(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


class BufferedLines:
    """A text stream over a file descriptor, flushed every `interval` seconds and at exit.

    At thousands of lines a second a write syscall per line is a large share of the
    receiver's time; a crash loses at most the last `interval` of lines.
    """

    _open: dict[int, BufferedLines] = {}  # one per file descriptor, however often configured

    @classmethod
    def over(cls, stream: Any) -> BufferedLines:
        """The process's buffered writer for `stream`'s file descriptor."""
        fd = stream.fileno()
        if fd not in cls._open:
            cls._open[fd] = cls(stream)
        return cls._open[fd]

    def __init__(self, stream: Any, interval: float = 0.2) -> None:
        self._out = open(os.dup(stream.fileno()), "wb", buffering=1 << 16)
        self._lock = threading.Lock()
        self._interval = interval
        threading.Thread(target=self._flush_forever, name="log-flush", daemon=True).start()
        atexit.register(self.flush)

    def write(self, text: str) -> int:
        data = text.encode()
        with self._lock:
            self._out.write(data)
        return len(text)

    def flush(self) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._out.flush()

    def isatty(self) -> bool:
        return False

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self._interval)
            self.flush()


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that knows its name, for `add_logger_name`."""

    def __init__(self, stream: Any, name: str) -> None:
        super().__init__(stream)
        self.name = name
        if isinstance(stream, BufferedLines):
            self._flush = _no_flush  # the stream flushes on its own schedule


def _no_flush() -> None:
    return None


def get_logger(name: str = "ringez") -> Any:
    """A structlog logger named `name` (bind, debug/info/warning/error with key-values)."""
    return structlog.get_logger(name)
