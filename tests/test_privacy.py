"""PRIVACY_REDACT_TRANSCRIPTS and phone masking, through the real service: scenarios
played by the sandbox into the real receiver and workers, then the logs, /metrics and
every record in Redis searched for what the caller said and their number."""

from __future__ import annotations

import asyncio
import io
import logging

import aiohttp
import pytest
import structlog
from prometheus_client import generate_latest

from ringez_worker.keys import Keys
from ringez_worker.logs import configure_logging
from ringez_worker.sandbox import start_scenario
from ringez_worker.sandbox.config import ANSWERS, FaultConfig, RouteConfig
from ringez_worker.sandbox.scenarios import ANGRY_LINES, CALM_LINES
from ringez_worker.transcripts import REDACTED_TEXT, redact_body
from ringez_worker.worker.envelope import delivery_id
from tests.agent_stack import agent_stack
from tests.conftest import event_body, signed_headers, wait_for
from tests.test_erase import dump, mentions

pytestmark = pytest.mark.timeout(90)

SECRET_TEXT = "my card number is 4111 1111 1111 1111 and my pin is 9876"
# Places the README's table lists as holding caller numbers (webhook bodies).
NUMBER_PLACES = (b"rz:log", b"rz:failed", b"arq:job:")


@pytest.fixture
def log_stream():
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()  # no file descriptor: lines written at once
    configure_logging("DEBUG", "json", stream=stream)
    yield stream
    structlog.configure(**saved)
    root.handlers[:], root.level = handlers, level


async def test_no_transcript_text_stored_and_no_number_logged(redis_url, redis_client, log_stream):
    keys = Keys()
    # The sandbox routes transfers to the caller's own number by default; a desk number of
    # its own keeps "the caller's number" apart from the transfer target the claim records.
    routing = RouteConfig(route_to="+15005550009", fallback_options=[])
    async with agent_stack(
        redis_url,
        sandbox_config={"routing": routing},
        privacy_redact_transcripts=True,
        job_max_tries=1,
    ) as stack:
        sb = stack.sandbox.sandbox
        for scenario in ("calm", "angry"):
            run = start_scenario(sb, scenario, stack.receiver_url)
            await asyncio.wait_for(run.task, 30)
        # A transcript segment while the API answers only 503: its handlers fail (one try
        # each here), and the failed-events record keeps the body.
        prefix = sb.faults.config.path_prefix
        sb.faults.configure(FaultConfig(rate_503=1.0, path_prefix=prefix))
        body = event_body(
            "transcription.updated",
            call_id="call_unknown",
            session_id="sess_unknown",
            text=SECRET_TEXT,
            speaker="caller",
            is_final=True,
        )
        async with (
            aiohttp.ClientSession() as http,
            http.post(stack.receiver_url, data=body, headers=signed_headers(body)) as resp,
        ):
            assert resp.status == 202

        async def settled() -> bool:
            return (
                await redis_client.hexists(keys.failed, delivery_id(body))
                and await redis_client.zcard(keys.queue) == 0
            )

        await wait_for(settled, deadline_s=30, what="every event handled, one failed")
        base = stack.receiver_url.rsplit("/webhooks", 1)[0]
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
        metrics += "".join(
            generate_latest(w.ctx["metrics"].registry).decode() for w in stack.workers
        )

    said = [*CALM_LINES, *ANGRY_LINES, SECRET_TEXT]
    stored = await dump(redis_client)
    # The handlers saw the text (they asked the API about it), yet nothing stored has it.
    assert stack.requests("/agents/intent-detection")
    assert mentions(stored, *said) == set()
    assert mentions(stored, REDACTED_TEXT)  # the delivery log and the record are there
    # Numbers only where the privacy table says bodies are kept, and erasable there.
    for key, _ in mentions(stored, ANSWERS):
        assert key.startswith(NUMBER_PLACES), key

    logs = log_stream.getvalue()
    assert "webhook.accepted" in logs and "handler.ok" in logs  # the service did log
    for text in [*said, ANSWERS, "5005550006"]:
        assert text not in logs, text
        assert text not in metrics, text
    # The one number the service logs, the transfer target, is masked to its last four.
    assert "+15005550009" not in logs and '"transfer_to":"+***0009"' in logs


def test_redact_body_keeps_bodies_without_text_byte_for_byte():
    plain = '{"event":"call.completed","data":{"call_id":"c","text_note":1}}'
    assert redact_body(plain) is plain
    with_text = event_body("transcription.updated", text="hello there").decode()
    assert "hello there" not in redact_body(with_text)
    assert REDACTED_TEXT in redact_body(with_text)
    assert redact_body('{"text": ') == '{"text": '  # not JSON: kept as it is
