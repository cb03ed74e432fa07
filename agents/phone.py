"""E.164 checks: no number reaches the Ringez API without one."""

from __future__ import annotations

import re

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


class InvalidNumber(ValueError):
    """Not an E.164 number; retrying cannot fix it."""

    retryable = False


def is_e164(value: object) -> bool:
    return isinstance(value, str) and bool(_E164.match(value))


def require_e164(value: object, what: str = "number") -> str:
    """Return `value` if it is E.164, else raise InvalidNumber naming `what`."""
    if not is_e164(value):
        raise InvalidNumber(f"{what} is not an E.164 number: {value!r}")
    return value  # type: ignore[return-value]
