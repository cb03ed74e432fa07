"""The console over HTTP (no browser): the gate, CSRF, headers, secrets, the CLI, and the
delivery log and counters the receiver and dispatcher write."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ringez_worker.handlers.router import Router
from ringez_worker.settings import Settings
from ringez_worker.worker.console import create_console_app
from ringez_worker.worker.console.auth import safe_next
from tests.conftest import event_body, make_settings, running_worker, signed_headers, wait_for
from tests.processes import run_cli

TOKEN = "console-token-for-tests-42"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def console_settings(redis_url: str) -> Settings:
    return make_settings(redis_url, console_token=TOKEN, console_base_path="/ops")


@pytest.fixture
async def console(console_settings: Settings) -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(create_console_app(console_settings)))
    await client.start_server()
    yield client
    await client.close()


async def login(console: TestClient, token: str = TOKEN) -> int:
    page = await console.get("/ops/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text()).group(1)
    r = await console.post(
        "/ops/login",
        data={"token": token, "nonce": nonce, "next": "/ops/failed"},
        allow_redirects=False,
    )
    return r.status


def test_console_refuses_to_start_without_a_token():
    result = run_cli("console", env={"CONSOLE_TOKEN": "", "RINGEZ_WEBHOOK_SECRET": "x"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CONSOLE_TOKEN" in lines[0]


async def test_pages_need_the_token_and_every_response_has_the_security_headers(console):
    for path in ("/ops/", "/ops/deliveries", "/ops/calls", "/ops/failed"):
        r = await console.get(path, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/ops/login?next=")
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    r = await console.get("/ops/api/overview", headers={"Accept": "application/json"})
    assert r.status == 401
    r = await console.get("/ops/api/overview", headers={"Authorization": "Bearer wrong"})
    assert r.status == 401
    r = await console.get("/ops/api/overview", headers=BEARER)
    assert r.status == 200 and "queue_depth" in await r.json()
    for path in ("/ops/login", "/ops/nope", "/ops/static/console.js"):
        r = await console.get(path)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert (await console.get("/ops/nope", headers=BEARER)).status == 404


async def test_login_sets_a_strict_httponly_cookie_and_posts_need_the_csrf_token(
    console, redis_client: Redis
):
    assert await login(console, "wrong") == 303
    assert "rz_console" not in {c.key for c in console.session.cookie_jar}
    assert await login(console) == 303
    cookie = next(c for c in console.session.cookie_jar if c.key == "rz_console")
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/ops/"
    assert TOKEN not in cookie.value
    page = await console.get("/ops/failed")
    assert page.status == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)
    await redis_client.hset(
        "rz:failed",
        "ab" * 32,
        b'{"delivery_id": "' + b"ab" * 32 + b'", "handlers": {}, "attempts": 1, "body": "{}"}',
    )
    data = {"action": "purge", "ids": "ab" * 32, "confirm": "yes"}
    assert (await console.post("/ops/failed/action", data=data)).status == 403
    assert (await console.post("/ops/failed/action", data={**data, "csrf": "x" * 64})).status == 403
    assert await redis_client.hlen("rz:failed") == 1
    r = await console.post("/ops/failed/action", data={**data, "csrf": csrf}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/ops/failed?done=purge&n=1"
    assert await redis_client.hlen("rz:failed") == 0


async def test_a_login_form_from_elsewhere_is_refused(console):
    r = await console.post(
        "/ops/login", data={"token": TOKEN, "nonce": "forged"}, allow_redirects=False
    )
    assert r.status == 403


async def test_the_cookie_is_secure_when_configured(redis_url: str):
    settings = make_settings(redis_url, console_token=TOKEN, console_secure_cookie=True)
    client = TestClient(TestServer(create_console_app(settings)))
    await client.start_server()
    try:
        r = await client.get("/login")
        assert "Secure" in r.headers["Set-Cookie"]
    finally:
        await client.close()


async def test_the_cookie_is_secure_over_tls_without_being_told(redis_url: str):
    # Served over TLS itself (no proxy in front), the console marks its cookie Secure
    # even with CONSOLE_SECURE_COOKIE unset; over plain HTTP it does not.
    import ssl

    import aiohttp
    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    settings = make_settings(redis_url, console_token=TOKEN)
    assert not settings.console_secure_cookie
    server = TestServer(create_console_app(settings), host="127.0.0.1")
    await server.start_server(ssl=server_ctx)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{server.port}/login"
            async with http.get(url, ssl=client_ctx) as r:
                assert r.status == 200 and "Secure" in r.headers["Set-Cookie"]
    finally:
        await server.close()
    plain = TestClient(TestServer(create_console_app(settings)))
    await plain.start_server()
    try:
        assert "Secure" not in (await plain.get("/login")).headers["Set-Cookie"]
    finally:
        await plain.close()


def test_after_login_only_paths_inside_the_console():
    assert safe_next("/ops", "/ops/failed") == "/ops/failed"
    for bad in ("//evil.example/ops/", "https://evil.example/", "/other", "/ops\\..", None):
        assert safe_next("/ops", bad) == "/ops/"


async def test_the_delivery_log_and_counters_and_no_secret_on_the_pages(
    console, console_settings: Settings, redis_client: Redis
):
    from ringez_worker.worker.receiver import REJECTS, create_app

    router = Router()

    @router.on("call.completed", name="test.ok")
    async def ok(event, ctx) -> None:
        pass

    receiver = TestClient(TestServer(create_app(console_settings)))
    await receiver.start_server()
    try:
        async with running_worker(console_settings, router):
            # A sender may put anything in a body; the API key must still not be shown.
            body = event_body(
                "call.completed",
                call_id="call_log",
                note="sk_test_not_a_real_key",
                payment_token="tok_secret_value",
            )
            assert (
                await receiver.post("/webhooks/ringez", data=body, headers=signed_headers(body))
            ).status == 202
            assert (
                await receiver.post("/webhooks/ringez", data=body, headers=signed_headers(body))
            ).status == 200
            assert (
                await receiver.post(
                    "/webhooks/ringez", data=body, headers={"Content-Type": "application/json"}
                )
            ).status == 401
            await wait_for(lambda: _run_logged(redis_client), 10, what="the run entry")
            await receiver.app[REJECTS].flush()  # else written within a second
    finally:
        await receiver.close()
    r = await console.get("/ops/api/overview", headers=BEARER)
    totals = (await r.json())["totals"]
    assert totals["accepted"] == 1 and totals["duplicate"] == 1 and totals["rejected"] == 1
    assert totals["handled"] == 1
    kinds = [e[1][b"k"] for e in await redis_client.xrange("rz:log")]
    assert kinds == [b"r", b"u", b"h"]
    page = await console.get("/ops/deliveries?call_id=call_log", headers=BEARER)
    text = await page.text()
    assert "handled" in text and "duplicate" in text
    delivery_id = re.search(r"/ops/deliveries/([0-9a-f]{64})", text).group(1)
    detail = await (await console.get(f"/ops/deliveries/{delivery_id}", headers=BEARER)).text()
    assert "test.ok" in detail
    assert "sk_test_not_a_real_key" not in detail and "tok_secret_value" not in detail
    assert "[redacted]" in detail


async def _run_logged(redis: Redis) -> bool:
    return any(e[1][b"k"] == b"h" for e in await redis.xrange("rz:log"))


async def test_the_log_is_capped(redis_url: str, redis_client: Redis):
    from ringez_worker.keys import Keys
    from ringez_worker.worker.queue import EventQueue

    queue = EventQueue(
        redis_client, Keys(), dedupe_ttl_ms=60_000, job_ttl_ms=60_000, log_max_entries=100
    )
    for i in range(600):
        await queue.enqueue(f"{i:064x}", b'{"event": "x", "data": {}}')
    # Approximate trimming: whole macro nodes go, so a little over the cap stays.
    assert 100 <= await redis_client.xlen("rz:log") < 300
    await queue.close()


def test_the_console_command_serves_on_loopback_with_the_token(redis_url: str):
    import signal
    import urllib.error
    import urllib.request

    from ringez_worker.sandbox.redis_server import free_port
    from tests.processes import Proc, wait_for_port

    port = free_port()
    proc = Proc(
        "console",
        "--port",
        str(port),
        env={"CONSOLE_TOKEN": TOKEN, "REDIS_URL": redis_url, "RINGEZ_WEBHOOK_SECRET": ""},
    )
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/api/overview"
        with urllib.request.urlopen(urllib.request.Request(url, headers=BEARER), timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                urllib.request.Request(url, headers={"Accept": "application/json"}), timeout=10
            )
        assert refused.value.code == 401
        assert "console.starting" in proc.wait_for_line("console.starting")
    finally:
        assert proc.stop(signal.SIGTERM) == 0
    assert TOKEN not in proc.output()


async def test_a_flood_of_rejected_webhooks_keeps_only_counts(
    console_settings: Settings, redis_client: Redis
):
    from ringez_worker.worker.receiver import REJECTS, create_app

    receiver = TestClient(TestServer(create_app(console_settings)))
    await receiver.start_server()
    try:
        junk = b'{"event": "' + b"A" * 5000 + b'"}'
        for _ in range(200):
            r = await receiver.post(
                "/webhooks/ringez",
                data=junk,
                headers={"X-Ringez-Signature": "f" * 64, "Content-Type": "application/json"},
            )
            assert r.status == 401
        await receiver.app[REJECTS].flush()
    finally:
        await receiver.close()
    assert await redis_client.exists("rz:log") == 0
    keys = [k async for k in redis_client.scan_iter(match="*")]
    assert all(k.startswith(b"rz:stats:") for k in keys), keys
    counts = {}
    for k in keys:
        counts.update(await redis_client.hgetall(k))
    assert counts == {b"rejected:invalid_signature": b"200"}
    assert sum([await redis_client.memory_usage(k) for k in keys]) < 500


async def test_the_overview_links_the_latest_report_served_with_no_script(console, redis_client):
    from ringez_worker.keys import Keys
    from ringez_worker.report.store import save_report

    page = await console.get("/ops/", headers=BEARER)
    assert 'href="/ops/reports/latest"' in await page.text()
    assert (await console.get("/ops/reports/latest", headers=BEARER)).status == 404
    html = "<html><style>h1{color:red}</style><h1>Daily report 2026-12-01</h1></html>"
    meta = {"day": "2026-12-01"}
    await save_report(redis_client, Keys(), "r1", meta, html, keep=3, max_bytes=1 << 20)
    r = await console.get("/ops/reports/latest", headers=BEARER)
    assert r.status == 200 and "Daily report 2026-12-01" in await r.text()
    policy = r.headers["Content-Security-Policy"]
    assert "script-src" not in policy and policy.startswith("default-src 'none'")
    gated = await console.get("/ops/reports/latest", allow_redirects=False)
    assert gated.status == 303  # still behind the login


async def test_a_killed_workers_record_is_shown_stale_and_not_counted(console, redis_client: Redis):
    # A SIGKILLed worker's presence record outlives it by its TTL (4 beats); the overview
    # counted it as alive until it expired.
    now_ms = int(time.time() * 1000)
    beat = {"every_ms": 1000, "running": 3, "complete": 0, "retried": 0, "failed": 0}
    await redis_client.set(
        "rz:worker:alive", orjson.dumps({**beat, "host": "a", "pid": 1, "at_ms": now_ms}), ex=60
    )
    gone = {**beat, "host": "b", "pid": 2, "at_ms": now_ms - 3500}
    await redis_client.set("rz:worker:gone", orjson.dumps(gone), ex=60)
    overview = await (await console.get("/ops/api/overview", headers=BEARER)).json()
    assert overview["workers_alive"] == 1 and overview["jobs_running"] == 3
    page = await (await console.get("/ops/", headers=BEARER)).text()
    assert page.count("stale: killed or stuck?") == 1


async def test_the_overview_says_when_dialing_or_the_account_is_paused(
    console, console_settings, redis_client: Redis
):
    from ringez_worker.api import Priority, RedisRateLimiter

    assert console_settings.ringez_api_key is not None
    limiter = RedisRateLimiter.for_api_key(redis_client, console_settings.ringez_api_key)
    page = await (await console.get("/ops/", headers=BEARER)).text()
    assert 'id="paused"' not in page
    await limiter.pause(3600, "429 from POST /calls/initiate", Priority.DIAL)
    page = await (await console.get("/ops/", headers=BEARER)).text()
    assert "API requests of class dial</b> paused for 60.0 more min" in page
    assert "429 from POST /calls/initiate" in page and "Every API request" not in page
    overview = await (await console.get("/ops/api/overview", headers=BEARER)).json()
    assert [p["scope"] for p in overview["budget"]["paused"]] == ["dial"]
    await limiter.pause(120, "429 from GET /wallet/balance")
    overview = await (await console.get("/ops/api/overview", headers=BEARER)).json()
    assert [p["scope"] for p in overview["budget"]["paused"]] == ["account", "dial"]


async def test_the_overview_counts_the_budget_and_the_oldest_queued_job(
    console, console_settings: Settings, redis_client: Redis
):
    from ringez_worker.api import RedisRateLimiter

    assert console_settings.ringez_api_key is not None
    limiter = RedisRateLimiter.for_api_key(
        redis_client, console_settings.ringez_api_key, limit=console_settings.ringez_rate_limit
    )
    for _ in range(3):
        assert await limiter.try_acquire() == 0
    now_ms = time.time() * 1000
    queue = console_settings.queue_name
    await redis_client.zadd(queue, {"old": now_ms - 12_000, "new": now_ms - 1_000})
    await redis_client.zadd(queue, {"later": now_ms + 60_000})  # not due: not "oldest"
    overview = await (await console.get("/ops/api/overview", headers=BEARER)).json()
    limit = console_settings.ringez_rate_limit
    assert overview["budget"] == {"used": 3, "left": limit - 3, "limit": limit, "paused": []}
    assert overview["queue_depth"] == 3
    assert 11.5 <= overview["oldest_age_s"] <= 20, overview["oldest_age_s"]
    page = await (await console.get("/ops/", headers=BEARER)).text()
    assert f">3</span> / {limit}</span>" in page and f">{limit - 3}</span> left" in page


async def test_deliveries_filter_by_event_status_session_and_id_prefix(
    console, console_settings: Settings, redis_client: Redis
):
    from ringez_worker.worker.envelope import delivery_id
    from ringez_worker.worker.receiver import create_app

    router = Router()

    @router.on("call.completed", name="test.ok")
    async def ok(event, ctx) -> None:
        pass

    @router.on("call.failed", name="test.broken")
    async def broken(event, ctx) -> None:
        raise ValueError("not retryable here")  # a plain error: retried, then failed

    bodies = {
        "done": event_body("call.completed", call_id="call_f1", session_id="sess_one"),
        "bad": event_body("call.failed", call_id="call_f2", session_id="sess_two"),
    }
    receiver = TestClient(TestServer(create_app(console_settings)))
    await receiver.start_server()
    try:
        async with running_worker(console_settings, router):
            for body in bodies.values():
                resp = await receiver.post(
                    "/webhooks/ringez", data=body, headers=signed_headers(body)
                )
                assert resp.status == 202

            async def both_ended() -> bool:
                got = await redis_client.hexists("rz:failed", delivery_id(bodies["bad"]))
                return bool(got) and await _run_logged(redis_client)

            await wait_for(both_ended, 30, what="one handled, one failed")
    finally:
        await receiver.close()
    ids = {name: delivery_id(body) for name, body in bodies.items()}

    async def shown(query: str) -> set[str]:
        text = await (await console.get(f"/ops/deliveries?{query}", headers=BEARER)).text()
        found = set(re.findall(r"/ops/deliveries/([0-9a-f]{64})", text))
        return {name for name, did in ids.items() if did in found}

    assert await shown("") == {"done", "bad"}
    assert await shown("event=call.failed") == {"bad"}
    assert await shown("status=handled") == {"done"}
    assert await shown("status=failed") == {"bad"}
    assert await shown("session_id=sess_one") == {"done"}
    assert await shown(f"q={ids['bad'][:8].upper()}") == {"bad"}  # prefix, any case
    assert await shown("event=call.completed&session_id=sess_two") == set()


async def test_the_log_keeps_a_day(redis_client: Redis):
    # DELIVERY_LOG_RETENTION: entries older than the retention go, in whole stream nodes
    # (XTRIM MINID ~), when the next batch is written.
    from ringez_worker.keys import Keys
    from ringez_worker.worker.queue import EventQueue

    two_days_ago = int(time.time() * 1000) - 2 * 86_400_000
    for i in range(300):
        await redis_client.xadd("rz:log", {"k": "u", "d": f"{i:064x}"}, id=f"{two_days_ago + i}-0")
    queue = EventQueue(
        redis_client, Keys(), dedupe_ttl_ms=60_000, job_ttl_ms=60_000, log_retention_ms=86_400_000
    )
    try:
        assert await queue.enqueue("f" * 64, b'{"event": "x", "data": {}}')
    finally:
        await queue.close()
    entries = await redis_client.xrange("rz:log")
    assert len(entries) < 100, len(entries)  # the old nodes went
    newest_id, newest = entries[-1]
    assert newest[b"k"] == b"r" and int(newest_id.split(b"-")[0]) > two_days_ago + 86_400_000
