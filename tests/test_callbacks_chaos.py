"""The callback queue under faults: two receivers, worker processes SIGKILLed while they
assign and dial, every webhook delivered twice. Checked from the sandbox's own records:
every request ends, each assignment placed one call, no agent over its maximum."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter

import pytest
from aiohttp.test_utils import TestServer

from ringez_worker.agents.callbacks import add_callback, load_roster_file
from ringez_worker.keys import Keys
from ringez_worker.sandbox import SandboxConfig, start_sandbox
from ringez_worker.sandbox.config import EmitterConfig
from ringez_worker.worker.receiver import create_app
from tests.conftest import SECRET, make_settings, wait_for
from tests.processes import Proc
from tests.test_callbacks import assert_never_over

pytestmark = pytest.mark.timeout(180)

REQUESTS = 40
AGENTS = {f"+1415555{900 + i:04d}": 1 + i % 2 for i in range(5)}  # 5 agents, 1 or 2 calls


async def test_requests_survive_sigkills_and_redeliveries(redis_url, redis_client, tmp_path):
    rng = random.Random(7)
    sandbox = await start_sandbox(
        SandboxConfig(
            webhook_secret=SECRET,
            pacing_seconds=0.05,
            talk_seconds=0.3,
            emitter=EmitterConfig(backoff_seconds=0.05, duplicate=True),
        )
    )
    receivers = []
    procs: list[Proc] = []
    try:
        settings = make_settings(redis_url)
        for _ in range(2):
            server = TestServer(create_app(settings))
            await server.start_server()
            receivers.append(server)
        sandbox.sandbox.config.receiver_url = str(receivers[0].make_url("/webhooks/ringez"))
        session = sandbox.sandbox.state.create_session(initial_minutes=10_000).session_id
        roster = tmp_path / "roster.json"
        roster.write_text(
            "["
            + ",".join(
                f'{{"id": "a{i}", "number": "{n}", "max_concurrent": {m}}}'
                for i, (n, m) in enumerate(AGENTS.items())
            )
            + "]"
        )
        env = {
            "REDIS_URL": redis_url,
            "RINGEZ_API_URL": sandbox.api_url,
            "RINGEZ_API_KEY": "sk_test_callbacks",
            "AGENTS_ENABLED": "callbacks",
            "CALLBACK_SESSION_ID": session,
            "CALLBACK_ROSTER": str(roster),
            "CALLBACK_SWEEP_SECONDS": "0.3",
            "CALLBACK_RETRY_AFTER_SECONDS": "0.2",
            "JOB_LEASE_SECONDS": "1",
            "WORKER_METRICS_PORT": "0",
            "RETRY_BACKOFF_SECONDS": "0.05",
        }

        def start() -> None:
            procs.append(Proc("worker", env=env))

        for _ in range(3):
            start()
        for p in procs:
            p.wait_for_line("worker.started")
        await load_roster_file(redis_client, Keys(), str(roster))
        ids = []
        for i in range(REQUESTS):
            urgency = rng.choice(("low", "normal", "high"))
            body = {"customer_id": f"c{i}", "phone": f"+1415556{i:04d}", "urgency": urgency}
            ids.append((await add_callback(redis_client, Keys(), body)).request_id)

        async def states() -> Counter[str]:
            found: Counter[str] = Counter()
            for rid in ids:
                state = await redis_client.hget(f"rz:callback:{rid}", "state")
                found[(state or b"gone").decode()] += 1
            return found

        kills = 0
        deadline = time.monotonic() + 120
        while (await states())["done"] < REQUESTS and time.monotonic() < deadline:
            if kills < 6:
                victim = rng.choice([p for p in procs if p.popen.poll() is None])
                victim.stop(signal.SIGKILL)
                kills += 1
                start()
            await asyncio.sleep(0.4)  # the pace of the faults, not a synchronisation

        async def all_done() -> bool:
            return (await states())["done"] == REQUESTS

        await wait_for(all_done, deadline_s=30, what=f"all {REQUESTS} done: {await states()}")
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)
        for server in receivers:
            await server.close()
        await sandbox.close()

    # One created call per assignment, however often a dial was retried or resent.
    calls = [c for c in sandbox.sandbox.state.calls.values() if c.session_id == session]
    per_request: Counter[str] = Counter(c.to_number for c in calls)
    tries = {}
    for rid in ids:
        record = await redis_client.hgetall(f"rz:callback:{rid}")
        tries[rid] = int(record[b"tries"])
        assert record[b"state"] == b"done"
    assert sum(per_request.values()) == sum(tries.values()), (per_request, tries)
    assert max(per_request.values()) == 1  # every call connected on its first assignment
    # Each call was transferred to its agent, and no agent was ever over its maximum.
    assert all(c.transferred_to == c.from_number for c in calls)
    assert_never_over(sandbox.sandbox.state, AGENTS)
    load = {
        k.decode(): int(v) for k, v in (await redis_client.hgetall("rz:callbacks:load")).items()
    }
    assert set(load.values()) == {0}, load
    assert kills >= 4, kills  # the faults came while requests were being worked
