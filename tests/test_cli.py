"""The commands users run: serve + worker + send, end to end as separate processes."""

from __future__ import annotations

import orjson

from ringez_worker.sandbox.redis_server import free_port
from tests.processes import Proc, run_cli, wait_for_port

SECRET = "whsec_cli_test_secret"


def test_serve_worker_send_reaches_a_handler_from_ringez_handlers(redis_url):
    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "RINGEZ_WEBHOOK_SECRET": SECRET,
        "RINGEZ_API_KEY": "sk_test_cli_key_value",
        "PORT": str(port),
        "RINGEZ_HANDLERS": "tests.sample_handlers",
    }
    serve = Proc("serve", env=env)
    work = Proc("worker", env=env)
    try:
        serve.wait_for_line("receiver.starting")
        wait_for_port(port)
        work.wait_for_line("worker.started")
        sent = run_cli("send", "call.completed", "--data", '{"duration": 42}', env=env)
        assert sent.returncode == 0, sent.stderr
        status, _, body = sent.stdout.partition(" ")
        assert status == "202"
        delivery = orjson.loads(body)["id"]

        line = work.wait_for_line("sample.call_completed")
        record = orjson.loads(line)
        assert record["delivery_id"] == delivery
        assert record["duration"] == 42
        serve.wait_for_line(delivery)  # the receiver's line for this webhook
    finally:
        assert work.stop() == 0
        serve.stop()
    for proc in (serve, work):
        assert SECRET not in proc.output()
        assert "sk_test_cli_key_value" not in proc.output()


def test_missing_secret_is_a_clear_start_up_error():
    result = run_cli("serve", env={"RINGEZ_WEBHOOK_SECRET": ""})
    assert result.returncode == 2
    assert "RINGEZ_WEBHOOK_SECRET" in result.stderr


def test_malformed_setting_is_a_clear_start_up_error():
    result = run_cli("worker", env={"REDIS_URL": "http://:leaky_password@nowhere"})
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr
    assert "leaky_password" not in result.stderr + result.stdout


def test_send_refuses_bad_data():
    result = run_cli("send", "call.completed", "--data", "[1]", env={"RINGEZ_WEBHOOK_SECRET": "x"})
    assert result.returncode == 2
    assert "JSON object" in result.stderr


async def test_plain_arq_runs_the_worker_settings(receiver, redis_url, redis_client):
    import os
    import subprocess
    import sys

    from tests.conftest import event_body, signed_headers, wait_for
    from tests.processes import ROOT

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_url,
        "RINGEZ_HANDLERS": "tests.sample_handlers",
        "WORKER_METRICS_PORT": "0",
        "AGENTS_ENABLED": "",
    }
    arq = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [sys.executable, "-m", "arq", "ringez_worker.worker.app.WorkerSettings"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = event_body("call.completed", call_id="via-arq", duration=5)
        resp = await receiver.post("/webhooks/ringez", data=body, headers=signed_headers(body))
        assert resp.status == 202

        async def handled() -> bool:
            return await redis_client.lrange("sample:completed", 0, -1) == [b"via-arq"]

        await wait_for(handled, deadline_s=30, what="the handler run by plain arq")
    finally:
        arq.terminate()
        arq.wait(30)
