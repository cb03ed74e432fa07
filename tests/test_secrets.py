"""The webhook secret and the API key never appear in logs, errors, metrics or the
failed-events record, even when a handler's own error message carries them."""

from __future__ import annotations

import urllib.request

from ringez_worker.sandbox.redis_server import free_port
from tests.processes import Proc, run_cli, wait_for_port

SECRET = "whsec_do_not_leak_4d2c9e"
API_KEY = "sk_test_do_not_leak_7b1f03"


def test_secrets_stay_out_of_every_output(redis_url):
    port = free_port()
    metrics_port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "RINGEZ_WEBHOOK_SECRET": f"{SECRET},whsec_older_secret_9f",
        "RINGEZ_API_KEY": API_KEY,
        "PORT": str(port),
        "RINGEZ_HANDLERS": "tests.leaky_handlers",
        "AGENTS_ENABLED": "",
        "JOB_MAX_TRIES": "1",
        "WORKER_METRICS_PORT": str(metrics_port),
        "LOG_LEVEL": "DEBUG",
    }
    serve = Proc("serve", env=env)
    work = Proc("worker", env=env)
    outputs: list[str] = []
    try:
        wait_for_port(port)
        work.wait_for_line("worker.started")
        sent = run_cli("send", "call.failed", "--data", '{"reason": "busy"}', env=env)
        assert sent.stdout.startswith("202")
        bad = run_cli("send", "call.failed", env={**env, "RINGEZ_WEBHOOK_SECRET": "wrong_secret"})
        assert bad.stdout.startswith("401")
        outputs += [sent.stdout, sent.stderr, bad.stdout, bad.stderr]

        work.wait_for_line("dispatch.gave_up")
        shown = run_cli("failed", "list", env=env)
        assert "leaky" in shown.stdout
        delivery = shown.stdout.splitlines()[1].split()[0]
        record = run_cli("failed", "show", delivery, env=env)
        assert "upstream rejected" in record.stdout
        outputs += [record.stdout, record.stderr]
        for url in (f"http://127.0.0.1:{port}/metrics", f"http://127.0.0.1:{metrics_port}/metrics"):
            with urllib.request.urlopen(url, timeout=5) as resp:
                outputs.append(resp.read().decode())
        outputs.append(run_cli("status", env=env).stdout)
    finally:
        serve.stop()
        work.stop()
    outputs += [serve.output(), work.output()]
    everything = "\n".join(outputs)
    assert "leaky.about_to_fail" in everything  # the handler did log its line
    for secret in (SECRET, "whsec_older_secret_9f", API_KEY):
        assert secret not in everything
    assert "[redacted]" in everything
