"""The console's gate: a bearer token or a login cookie, CSRF on every POST, and the
security headers every response carries."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import TypedDict
from urllib.parse import quote

from aiohttp import web
from redis.exceptions import RedisError

SESSION_COOKIE = "rz_console"
LOGIN_COOKIE = "rz_console_login"
# No inline script or style anywhere: only the console's own static files.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CookieArgs(TypedDict):
    """The keyword arguments of `StreamResponse.set_cookie` every console cookie shares."""

    httponly: bool
    samesite: str
    secure: bool
    path: str


class Gate:
    """Checks requests against CONSOLE_TOKEN. The cookie and the CSRF token are HMACs of
    it (so neither reveals it, and changing the token logs everyone out)."""

    def __init__(self, token: str, base: str, *, secure_cookie: bool) -> None:
        if not token:
            raise ValueError("the console needs a token")
        self._token = token.encode()
        self.base = base
        self.secure_cookie = secure_cookie
        self.session_value = self._derive(b"console-session")
        self.csrf = self._derive(b"console-csrf")

    def _derive(self, purpose: bytes) -> str:
        return hmac.new(self._token, purpose, hashlib.sha256).hexdigest()

    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def via_bearer(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def via_cookie(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.cookies.get(SESSION_COOKIE, ""), self.session_value)

    def csrf_ok(self, sent: str) -> bool:
        return hmac.compare_digest(sent, self.csrf)

    def cookie_args(self, request: web.Request) -> CookieArgs:
        return {
            "httponly": True,
            "samesite": "Strict",
            "secure": self.secure_cookie or request.secure,
            "path": self.base + "/",
        }

    @staticmethod
    def login_nonce() -> str:
        return secrets.token_urlsafe(24)


def safe_next(base: str, value: str | None) -> str:
    """Where to go after login: only a path inside the console (no open redirect)."""
    if value and value.startswith(base + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return base + "/"


def middleware(gate: Gate, public: set[str]) -> Callable:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await _check(request, handler)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        except (RedisError, OSError) as exc:
            response = web.Response(status=503, text=f"Redis is unavailable ({type(exc).__name__})")
        for name, value in SECURITY_HEADERS.items():
            # A page may narrow its own policy (the kept report: images inline, no script).
            response.headers.setdefault(name, value)
        return response

    async def _check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:
            raise request.match_info.http_exception  # no such page: a 404, not a login
        if request.path in public or request.path.startswith(gate.base + "/static/"):
            return await handler(request)
        if "Authorization" in request.headers:
            if not gate.via_bearer(request):
                raise web.HTTPUnauthorized(text="wrong console token")
            # A script's bearer header is not ambient: no CSRF token needed.
            return await handler(request)
        if not gate.via_cookie(request):
            if request.method == "GET" and "json" not in request.headers.get("Accept", ""):
                raise web.HTTPSeeOther(f"{gate.base}/login?next={quote(request.path_qs)}")
            raise web.HTTPUnauthorized(text="console token required")
        if request.method not in ("GET", "HEAD"):
            form = await request.post()
            if not gate.csrf_ok(str(form.get("csrf", ""))):
                raise web.HTTPForbidden(text="missing or wrong CSRF token")
        return await handler(request)

    return guard
