"""PRIVACY_REDACT_TRANSCRIPTS: transcript text kept out of stored copies of event bodies.

Handlers get the body as it came; only what is stored (the delivery log's receipt, the
failed-events record, the agents' own state) goes through here first.
"""

from __future__ import annotations

from typing import Any

import orjson

REDACTED_TEXT = "[transcript redacted]"
# Where the contract carries what callers say: `transcription.updated`'s `text`, the
# transcript's segments (`GET /transcripts/{id}`), the AI helpers' `transcript_segment`.
TEXT_FIELDS = frozenset({"text", "transcript_segment", "transcript_text"})


def redact_value(value: Any) -> Any:
    """`value` with every string under a transcript field replaced (recursing)."""
    if isinstance(value, dict):
        return {
            k: REDACTED_TEXT if k in TEXT_FIELDS and isinstance(v, str) and v else redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value


def redact_body(body: str) -> str:
    """The body with its transcript text replaced; the same string when it has none
    (or is not JSON), so bodies without text keep their exact bytes."""
    if not any(f'"{name}"' in body for name in TEXT_FIELDS):
        return body  # the common case: one substring scan per field, no parse
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    redacted = redact_value(payload)
    return body if redacted == payload else orjson.dumps(redacted).decode()
