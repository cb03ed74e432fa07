"""`ringez-worker dev`, the README's first command, as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ringez_worker.sandbox.redis_server import free_port
from tests.processes import Proc, run_cli, wait_for_port


def test_dev_plays_the_scenarios_through_the_agents_and_stays_up():
    port = free_port()
    env = {
        "PORT": str(port),
        "REDIS_URL": "",  # unset below: dev must bring its own Redis
        "RINGEZ_WEBHOOK_SECRET": "",
        "RINGEZ_API_KEY": "",
    }
    proc = Proc("dev", env=env, unset=("REDIS_URL",))
    try:
        proc.wait_for_line("ringez-agent-worker dev", deadline_s=30)
        redis_line = proc.wait_for_line("  redis ")
        assert "redis-server" in redis_line or "valkey" in redis_line or "fakeredis" in redis_line
        proc.wait_for_line("still running", deadline_s=90)
        out = proc.output()
        # Each scenario's events reached the handlers and the agents acted on them.
        assert "calm: call" in out and "angry: call" in out and "low_balance: call" in out
        # The console came up with a fresh token, and the printed login works.
        console = re.search(r"  console   (http://\S+)/login  \(token (\S+)\)", out)
        assert console, out
        assert _get(console.group(1) + "/api/overview", console.group(2)) == 200
        assert _get(console.group(1) + "/api/overview", "wrong") == 401
        assert "escalation transferred to +15005550006" in out
        assert "recharge  charged" in out
        assert "failed events: 0" in out
        assert out.count("escalation transferred") == 1

        # The summary's report line works as printed, on the scenarios just played.
        report_line = proc.wait_for_line("  report: ")
        words = report_line.split("while this runs, ", 1)[1].split()
        env_words = [w for w in words if "=" in w and not w.startswith("-")]
        report_env = dict(w.split("=", 1) for w in env_words)
        out_dir = tempfile.mkdtemp()
        args = words[len(env_words) + 1 :]  # after "ringez-worker"
        assert args[0] == "report" and args[-2:] == ["--out", "ringez-report"], args
        made = run_cli(*args[:-1], out_dir, env=report_env, timeout=60)
        assert made.returncode == 0, made.stderr
        page = next(Path(out_dir).glob("report-*.html")).read_text()
        assert 'data-metric="total_calls">4<' in page
        assert 'data-metric="transfers">1<' in page
        assert 'data-metric="recharges">1<' in page

        # So does the erase line: the first call's data goes, and says how much.
        erase_line = proc.wait_for_line("  erase: ").split("  erase: ", 1)[1]
        env_word, _, *erase_args = erase_line.split("  (or", 1)[0].split()
        assert erase_args[:2] == ["erase", "--call"], erase_args
        erased = run_cli(*erase_args, env=dict([env_word.split("=", 1)]), timeout=60)
        assert erased.returncode == 0, erased.stderr
        assert int(erased.stdout.splitlines()[-1].split()[-1]) > 0, erased.stdout

        wait_for_port(port)
        sent = run_cli(
            "send",
            "call.completed",
            "--url",
            f"http://127.0.0.1:{port}/webhooks/ringez",
            env={"RINGEZ_WEBHOOK_SECRET": "whsec_dev_local"},
        )
        assert sent.stdout.startswith("202"), sent.stdout + sent.stderr
        proc.wait_for_line("support.call_summary", deadline_s=20)
    finally:
        code = proc.stop(signal.SIGINT)
    assert code == 0
    assert "stopping" in proc.output()


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_dev_works_a_small_callback_queue_through(tmp_path):
    env = {
        "PORT": str(free_port()),
        "RINGEZ_WEBHOOK_SECRET": "",
        "RINGEZ_API_KEY": "",
        "TMPDIR": str(tmp_path),  # where its roster file goes, and is removed from
    }
    done = run_cli(
        "dev", "--scenarios", "callbacks", "--exit-after-scenarios", env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("    c-")}
    assert set(rows) == {"c-vip", "c-billing", "c-urgent", "c-busy"}, out
    assert "priority= 50" in rows["c-vip"] and rows["c-vip"].endswith("-> done")
    assert "agent=ana" in rows["c-billing"]  # the only agent with billing and Spanish
    assert rows["c-busy"].endswith("-> failed (busy)") and "tries=2" in rows["c-busy"]
    assert not list(tmp_path.glob("ringez-roster-*")), "dev left its roster file behind"


def test_dev_poor_quality_turns_the_opt_in_monitor_on_and_shows_what_it_did():
    # The README's "Try it" line as written: no AGENTS_ENABLED naming `quality`.
    assert "quality" not in os.environ.get("AGENTS_ENABLED", "")
    env = {"PORT": str(free_port()), "RINGEZ_WEBHOOK_SECRET": "", "RINGEZ_API_KEY": ""}
    done = run_cli(
        "dev",
        "--scenarios",
        "poor_quality",
        "--exit-after-scenarios",
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "critical->switch_codec" in out and "warning->report_issue" in out, out
    assert "quality   reported issue (status 200)" in out
    assert "quality   switched codec to OPUS (status 200)" in out


def test_dev_runs_a_small_campaign_and_prints_each_contact():
    env = {"PORT": str(free_port()), "RINGEZ_WEBHOOK_SECRET": "", "RINGEZ_API_KEY": ""}
    done = run_cli("dev", "--scenarios", "campaign", "--exit-after-scenarios", env=env, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "20/20 contacts final" in out and ": done," in out, out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("    d")}
    assert len(rows) == 20, out
    statuses = [r[2] for r in rows.values()]
    assert statuses.count("busy") == 3 and statuses.count("no_answer") == 3, out
    assert rows["d03"][2:4] == ["busy", "2"]  # +15006660214: busy, tried again once
    assert rows["d02"][1] == "+***0137" and rows["d02"][4] == "7"  # pressed its last digit
    assert "+15006660137" not in out  # numbers cut to their last four digits
