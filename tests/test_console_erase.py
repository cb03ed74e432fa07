"""The console's erase action: behind the token and CSRF, a confirmation first, then the
same erasure as `ringez-worker erase`, with what went from each place."""

from __future__ import annotations

import re

from redis.asyncio import Redis

from ringez_worker.handlers.router import Router
from tests.conftest import event_body, running_worker, signed_headers, wait_for
from tests.test_console import BEARER, console, console_settings, login  # noqa: F401
from tests.test_erase import dump, mentions


async def test_erase_a_call_from_the_console(console, receiver, settings, redis_client: Redis):  # noqa: F811
    router = Router()

    @router.on("call.completed")
    async def noop(event, ctx) -> None:
        return None

    async with running_worker(settings, router):
        for call in ("call_erase_me", "call_keep_me"):
            body = event_body(call_id=call, session_id=f"sess_{call}")
            resp = await receiver.post("/webhooks/ringez", data=body, headers=signed_headers(body))
            assert resp.status == 202

        async def logged() -> bool:
            return await redis_client.xlen("rz:log") == 4  # two receipts, two runs

        await wait_for(logged, what="two receipts and their runs in the delivery log")

    form = {"kind": "call", "value": "call_erase_me", "confirm": "yes"}
    assert (await console.post("/ops/erase", data=form)).status == 401  # no login
    assert await login(console) == 303
    assert (await console.post("/ops/erase", data=form)).status == 403  # no CSRF token
    assert mentions(await dump(redis_client), "call_erase_me")

    page = await console.get("/ops/calls/call_erase_me")
    assert page.status == 200 and 'id="erase-call"' in await page.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)
    asked = await console.post(
        "/ops/erase", data={"kind": "call", "value": "call_erase_me", "csrf": csrf}
    )
    text = await asked.text()
    assert asked.status == 200 and 'id="confirm"' in text and "delivery log" in text
    assert mentions(await dump(redis_client), "call_erase_me")  # nothing gone yet

    done = await console.post("/ops/erase", data={**form, "csrf": csrf})
    text = await done.text()
    assert done.status == 200
    assert re.search(r'data-place="delivery log">2<', text), text
    after = await dump(redis_client)
    assert mentions(after, "call_erase_me") == set()
    assert mentions(after, "call_keep_me")
    assert await redis_client.xlen("rz:log") == 2  # the other call's receipt and run

    # A script with the bearer token (no cookie, no CSRF): the same action, now zero.
    again = await console.post("/ops/erase", data=form, headers=BEARER)
    assert again.status == 200 and "0 removed" in await again.text()
    bad = await console.post("/ops/erase", data={"kind": "phone", "value": "12"}, headers=BEARER)
    assert bad.status == 400
