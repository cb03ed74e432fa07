"""`X-Ringez-Signature`: lowercase hex HMAC-SHA256 of the raw request body."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

HEADER = "X-Ringez-Signature"
_HEX = frozenset("0123456789abcdef")


def sign(body: bytes, secret: bytes | str) -> str:
    """Return the signature Ringez sends for `body`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def is_well_formed(signature: str) -> bool:
    """True when `signature` looks like a SHA-256 hex digest (any case)."""
    return len(signature) == 64 and _HEX.issuperset(signature.lower())


def verify(body: bytes, signature: str, secrets: Iterable[bytes]) -> bool:
    """True when `signature` matches `body` under any of `secrets` (constant time per secret)."""
    candidate = signature.strip().lower().encode()
    matched = False
    for secret in secrets:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        # Check every secret so the time taken does not say which one matched.
        matched |= hmac.compare_digest(expected, candidate)
    return matched
