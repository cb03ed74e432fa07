"""Scale: 2 receiver processes and 3 worker processes on one real Redis.

20,000 distinct signed events go to both receivers through a bounded-concurrency client.
10% of them are redelivered once their first delivery has been acknowledged (half to the
same receiver, half to the other) and must get 200 `duplicate`; another 1% are sent to
both receivers at the same moment and exactly one of the two may win a 202. Every
acknowledged event must then be handled exactly once: a counting handler HINCRBYs one
hash field per delivery id, so a missing field is a lost event and a count above 1 a
double run.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import aiohttp
import orjson
import pytest

from ringez_worker import signature
from ringez_worker.keys import Keys
from ringez_worker.sandbox.redis_server import free_port
from ringez_worker.worker.cli import build_event
from ringez_worker.worker.envelope import delivery_id
from tests.conftest import wait_for
from tests.processes import Proc
from tests.scale_handlers import COUNTS_KEY

SECRET = "whsec_scale_test_secret"
PATH = "/webhooks/ringez"
EVENTS = 20_000
REDELIVER_EVERY = 10  # 10% redelivered after their acknowledgement
RACE_EVERY = 100  # 1% sent to both receivers at once
CONCURRENCY = 64
RECEIVERS = 2
WORKERS = 3
EVENT_NAMES = ("call.initiated", "call.answered", "call.completed", "transcription.updated")


def build_bodies(n: int) -> list[tuple[bytes, str]]:
    """`n` distinct Ringez-shaped bodies with their signatures, built before the clock runs."""
    out = []
    for i in range(n):
        data = {"call_id": f"call_{i}", "session_id": f"sess_{i % 97}", "seq": i}
        if i % 4 == 3:
            data["text"] = "hello"
        body = build_event(EVENT_NAMES[i % len(EVENT_NAMES)], data)
        out.append((body, signature.sign(body, SECRET.encode())))
    return out


async def post(session: aiohttp.ClientSession, url: str, body: bytes, sig: str) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", signature.HEADER: sig}
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


@pytest.mark.timeout(240)
async def test_two_receivers_three_workers_handle_every_event_exactly_once(redis_url, redis_client):
    ports = [free_port() for _ in range(RECEIVERS)]
    keys = Keys()
    env = {
        "REDIS_URL": redis_url,
        "RINGEZ_WEBHOOK_SECRET": SECRET,
        "RINGEZ_HANDLERS": "tests.scale_handlers",
        "LOAD_ENTRY_POINTS": "false",
        "WORKER_METRICS_PORT": "0",
        "HOST": "127.0.0.1",
        # 22,000 INFO lines per process would cost more CPU than the work itself.
        "LOG_LEVEL": "WARNING",
    }
    unset = ("RINGEZ_API_KEY", "QUEUE_NAME", "KEY_PREFIX")  # this test uses the defaults
    receivers = [Proc("serve", env={**env, "PORT": str(p)}, unset=unset) for p in ports]
    workers = [Proc("worker", env=env, unset=unset) for _ in range(WORKERS)]
    urls = [f"http://127.0.0.1:{p}{PATH}" for p in ports]
    bodies = build_bodies(EVENTS)
    ids = [delivery_id(b) for b, _ in bodies]
    assert len(set(ids)) == EVENTS

    firsts: dict[int, int] = {}  # event index -> status of its first (or only) delivery
    redelivered: dict[int, tuple[int, dict]] = {}  # index -> status, body of the redelivery
    raced: dict[int, list[int]] = {}  # index -> both statuses of a simultaneous pair
    try:
        async with aiohttp.ClientSession() as probe:

            async def all_ready() -> bool:
                for proc in (*receivers, *workers):
                    assert proc.popen.poll() is None, proc.output()[-3000:]
                for port in ports:
                    try:
                        async with probe.get(f"http://127.0.0.1:{port}/readyz") as resp:
                            if resp.status != 200:
                                return False
                    except aiohttp.ClientError:
                        return False
                # A worker writes its presence key once it polls the queue.
                present = [k async for k in redis_client.scan_iter(match=keys.worker("*"))]
                return len(present) == WORKERS

            await wait_for(all_ready, deadline_s=30, interval=0.05, what="receivers and workers")

        order = list(range(EVENTS))
        random.Random(7).shuffle(order)
        work = iter(order)

        async def sender(session: aiohttp.ClientSession) -> None:
            for i in work:
                url = urls[i % RECEIVERS]
                body, sig = bodies[i]
                if i % RACE_EVERY == 1:
                    pair = await asyncio.gather(*(post(session, u, body, sig) for u in urls))
                    raced[i] = sorted(status for status, _ in pair)
                    continue
                firsts[i], _ = await post(session, url, body, sig)
                if i % REDELIVER_EVERY == 0:
                    # Ringez redelivers after a timeout: to the same receiver or, behind a
                    # load balancer, to the other one.
                    other = urls[(i + (i // REDELIVER_EVERY) % 2) % RECEIVERS]
                    redelivered[i] = await post(session, other, body, sig)

        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(sender(session) for _ in range(CONCURRENCY)))
        sent_s = time.monotonic() - started

        async def drained() -> bool:
            for proc in workers:
                assert proc.popen.poll() is None, proc.output()[-3000:]
            async with redis_client.pipeline(transaction=False) as pipe:
                pipe.hlen(COUNTS_KEY)
                pipe.zcard(keys.queue)
                handled, queued = await pipe.execute()
            return handled >= EVENTS and queued == 0

        await wait_for(drained, deadline_s=90, interval=0.05, what="the queue to drain")
        total_s = time.monotonic() - started
        print(
            f"\nscale: {EVENTS} events + {len(redelivered)} redeliveries + {len(raced)} races "
            f"sent in {sent_s:.1f} s, all handled after {total_s:.1f} s"
        )
    finally:
        codes = [p.stop() for p in workers] + [p.stop() for p in receivers]
        for proc in (*receivers, *workers):
            proc.stop(signal.SIGKILL)

    # Every first delivery was acknowledged as new; every redelivery as a duplicate.
    assert set(firsts.values()) == {202}, sorted(set(firsts.values()))
    assert len(redelivered) == len(range(0, EVENTS, REDELIVER_EVERY))
    for i, (status, answer) in redelivered.items():
        assert status == 200 and answer == {"received": True, "duplicate": True, "id": ids[i]}
    # Two receivers racing on one body: exactly one 202, on either of them.
    assert len(raced) == EVENTS // RACE_EVERY
    assert all(statuses == [200, 202] for statuses in raced.values()), raced
    assert len(firsts) + len(raced) == EVENTS

    # Every acknowledged event handled exactly once: none missing, none twice.
    counts = {k.decode(): int(v) for k, v in (await redis_client.hgetall(COUNTS_KEY)).items()}
    assert set(counts) == set(ids), (len(set(ids) - set(counts)), len(set(counts) - set(ids)))
    twice = {k: v for k, v in counts.items() if v != 1}
    assert not twice, f"{len(twice)} events handled more than once"
    assert await redis_client.hlen(keys.failed) == 0
    assert codes == [0] * (WORKERS + RECEIVERS), codes
    for proc in (*receivers, *workers):
        assert "handler.failed" not in proc.output()
        assert "Traceback" not in proc.output()
