"""Drain rate: N queued events through worker processes with a no-op handler.

Jobs are written with a start time a few seconds ahead, so every worker is up and
idle when they become due; the clock runs from that moment to an empty queue.
Loopback only, bounded, stops by itself.

Also reports each worker's peak RSS (VmHWM from /proc) during the run.

    python bench/drain.py --events 20000 --workers 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import proc_status  # noqa: E402
from ringez_worker.jobs import job_bytes  # noqa: E402
from ringez_worker.keys import Keys  # noqa: E402
from ringez_worker.sandbox.redis_server import RedisServer  # noqa: E402
from ringez_worker.worker.cli import build_event  # noqa: E402
from tests.processes import Proc  # noqa: E402


def load(client: redis.Redis, keys: Keys, events: int, due_ms: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(events):
        body = build_event("call.completed", {"call_id": f"c{i}", "session_id": "s", "duration": 1})
        did = hashlib.sha256(body).hexdigest()
        pipe.psetex(keys.job(did), 3_600_000, job_bytes(did, body, due_ms))
        pipe.zadd(keys.queue, {did: due_ms})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def wait_subscribed(
    client: redis.Redis, keys: Keys, procs: list[Proc], deadline_s: float = 60
) -> None:
    """Every worker subscribes to the wake channel once it polls: that is readiness."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if dict(client.pubsub_numsub(keys.wake)).get(keys.wake.encode(), 0) >= len(procs):
            return
        if any(p.popen.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    tails = "\n".join(p.output()[-1500:] for p in procs)
    raise SystemExit(f"workers did not start:\n{tails}")


def run(events: int, workers: int, lead_s: float, log_level: str) -> dict[str, float]:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        keys = Keys()
        env = {
            "REDIS_URL": server.url,
            "RINGEZ_HANDLERS": "bench.noop_handlers",
            "LOG_LEVEL": log_level,
            "RINGEZ_WEBHOOK_SECRET": "whsec_bench",
            # No metrics port: several workers (or anything else on 9100) must not collide.
            "WORKER_METRICS_PORT": "0",
        }
        procs = [Proc("worker", env=env) for _ in range(workers)]
        try:
            wait_subscribed(client, keys, procs)
            due_ms = int((time.time() + lead_s) * 1000)
            load(client, keys, events, due_ms)
            if time.time() * 1000 > due_ms:
                raise SystemExit("loading took longer than --lead; raise it")
            deadline = time.monotonic() + 600
            while client.zcard(keys.queue) and time.monotonic() < deadline:
                time.sleep(0.005)
            elapsed = time.time() - due_ms / 1000
            left = client.zcard(keys.queue)
            done = sum(1 for _ in client.scan_iter("rz:done:*", count=5000))
            # Peak RSS of each worker over the whole run (VmHWM), read before they stop.
            peaks = [proc_status(p.popen.pid).get("VmHWM", 0) for p in procs]
        finally:
            for p in procs:
                p.stop()
        return {
            "events": events,
            "workers": workers,
            "seconds": round(elapsed, 3),
            "events_per_s": round(events / elapsed, 1),
            "left_in_queue": left,
            "completion_records": done,
            "worker_vmhwm_mb": [round(kb / 1024, 1) for kb in peaks],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--lead", type=float, default=5.0, help="seconds between load and start")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    os.chdir(ROOT)
    print(run(args.events, args.workers, args.lead, args.log_level))


if __name__ == "__main__":
    main()
