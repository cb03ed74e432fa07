"""Latency to action: from the receiver's 2xx (as the load client sees it) to the handler starting.

For each worker mode: a fresh redis-server, `ringez-worker serve` and one worker
whose only handler (bench/latency_handlers.py) stores time.time() at its start in a Redis
hash keyed by delivery id. An asyncio aiohttp client (uvloop) sends signed unique bodies
on an open-loop schedule (request i is due at start + i/rate whether or not earlier ones
have been answered) and records the wall-clock time of every 2xx. After a short warm-up,
--rate events/s for --duration s; then percentiles of handler_start - 2xx_time (negative
when the handler started before the client had read the answer).

Worker modes:
  wake      ringez-worker worker (RingezWorker: claim batch, pub/sub wake)
  poll      arq ringez_worker.worker.app.WorkerSettings (plain arq polling, poll_delay 0.05)
  poll-0.5  the same with WORKER_POLL_DELAY_SECONDS=0.5 (arq's own default poll delay)

Loopback only, bounded (--duration <= 120 s), stops by itself.

    python bench/latency.py                       # 1,000/s for 20 s, wake and poll
    python bench/latency.py --modes wake,poll,poll-0.5 --rate 1000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    SECRET,
    WEBHOOK_PATH,
    Service,
    cpu_seconds,
    delivery_id,
    ensure_apt,
    machine,
    machine_busy_seconds,
    percentile,
    signed_request,
    wait_for_port,
    wait_quiet,
)
from bench.latency_handlers import START_KEY  # noqa: E402
from ringez_worker.keys import Keys  # noqa: E402
from ringez_worker.sandbox.redis_server import RedisServer, free_port  # noqa: E402

ALL_MODES = ("wake", "poll", "poll-0.5")
Request = tuple[bytes, str, str]  # body, signature, delivery id


def make_requests(count: int, tag: str) -> list[Request]:
    out = []
    for i in range(count):
        body, sig = signed_request(f"call_lat_{tag}_{i}")
        out.append((body, sig, delivery_id(body)))
    return out


async def fire(url: str, requests: list[Request], rate: float) -> dict[str, Any]:
    """Send `requests` at `rate`/s, open loop; the 2xx wall-clock time of each delivery."""
    answered: dict[str, float] = {}
    request_ms: list[float] = []
    statuses: Counter[int] = Counter()
    late_ms: list[float] = []
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(req: Request) -> None:
            body, sig, did = req
            headers = {"Content-Type": "application/json", "X-Ringez-Signature": sig}
            sent = time.time()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    got = time.time()
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                statuses[-1] += 1
                return
            statuses[status] += 1
            if 200 <= status < 300:
                answered[did] = got
                request_ms.append((got - sent) * 1000)

        # perf_counter, not loop.time(): uvloop's clock only has millisecond resolution.
        clock = time.perf_counter
        tasks: list[asyncio.Task[None]] = []
        start = clock()
        sent = 0
        while sent < len(requests):
            now = clock()
            due = min(len(requests), int((now - start) * rate) + 1)
            while sent < due:
                # How far behind its schedule this request leaves: the open loop's honesty.
                late_ms.append(max(0.0, (now - (start + sent / rate)) * 1000))
                tasks.append(asyncio.create_task(one(requests[sent])))
                sent += 1
            next_at = start + sent / rate
            await asyncio.sleep(max(0.0, next_at - clock()))
        elapsed = clock() - start
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    late_ms.sort()
    request_ms.sort()
    return {
        "answered": answered,
        "statuses": dict(statuses),
        "send_rate": len(requests) / elapsed if elapsed else 0.0,
        "late_p99_ms": percentile(late_ms, 99),
        "late_max_ms": late_ms[-1] if late_ms else 0.0,
        "request_p50_ms": percentile(request_ms, 50),
        "request_p99_ms": percentile(request_ms, 99),
    }


def worker_service(mode: str, redis_url: str, log_dir: Path) -> Service:
    env = {
        "REDIS_URL": redis_url,
        "RINGEZ_WEBHOOK_SECRET": SECRET,
        "RINGEZ_HANDLERS": "bench.latency_handlers",
        "LOG_LEVEL": "INFO",
        "WORKER_METRICS_PORT": "0",
    }
    if mode == "wake":
        return Service(f"worker-{mode}", ["-m", "ringez_worker.worker.cli", "worker"], env, log_dir)
    if mode == "poll-0.5":
        env["WORKER_POLL_DELAY_SECONDS"] = "0.5"
    return Service(
        f"worker-{mode}", ["-m", "arq", "ringez_worker.worker.app.WorkerSettings"], env, log_dir
    )


def wait_handled(client: redis.Redis, count: int, deadline_s: float = 60.0) -> int:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        handled = int(client.hlen(START_KEY))
        if handled >= count:
            return handled
        time.sleep(0.05)
    return int(client.hlen(START_KEY))


def run_mode(mode: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    warm = make_requests(int(args.rate * args.warmup), f"{mode}_warm")
    main = make_requests(int(args.rate * args.duration), f"{mode}_main")
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        port = free_port()
        env = {"REDIS_URL": server.url, "RINGEZ_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "INFO"}
        receiver = Service(
            f"receiver-{mode}",
            ["-m", "ringez_worker.worker.cli", "serve", "--port", str(port)],
            env,
            log_dir,
        )
        worker = worker_service(mode, server.url, log_dir)
        try:
            wait_for_port(port)
            url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
            # The worker is ready once a warm-up event has gone all the way through.
            end = time.monotonic() + 60
            while client.hlen(START_KEY) == 0 and time.monotonic() < end:
                asyncio.run(fire(url, make_requests(1, f"{mode}_probe{time.time()}"), 1.0))
                time.sleep(0.5)
            if not worker.alive() or client.hlen(START_KEY) == 0:
                raise SystemExit(f"worker not ready:\n{worker.tail()}")
            asyncio.run(fire(url, warm, args.rate))
            wait_handled(client, len(warm) + 1)
            client.delete(START_KEY)
            # The worker's own idle polling stays well under the threshold.
            quiet = wait_quiet(max_busy=0.25)
            busy0 = machine_busy_seconds()
            redis_pid = server.process.pid if server.process else 0
            me0 = sum(os.times()[:2])
            cpu0 = (receiver.cpu(), worker.cpu(), cpu_seconds(redis_pid))
            started = time.monotonic()
            result = asyncio.run(fire(url, main, args.rate))
            handled = wait_handled(client, len(result["answered"]))
            cpu_s = (receiver.cpu() - cpu0[0], worker.cpu() - cpu0[1])
            wall = time.monotonic() - started
            busy = (machine_busy_seconds() - busy0) / wall
            ours = (
                cpu_s[0] + cpu_s[1] + cpu_seconds(redis_pid) - cpu0[2] + sum(os.times()[:2]) - me0
            )
            starts = {k.decode(): float(v) for k, v in client.hgetall(START_KEY).items()}
            depth = int(client.zcard(Keys().queue))
            mem = (receiver.memory_kb(), worker.memory_kb())
        finally:
            worker.stop()
            receiver.stop()
            client.close()
    answered: dict[str, float] = result["answered"]
    diffs = sorted((starts[d] - t) * 1000 for d, t in answered.items() if d in starts)
    return {
        "mode": mode,
        "events": len(main),
        "send_rate": round(result["send_rate"], 1),
        "statuses": result["statuses"],
        "handled": handled,
        "missing": len(answered) - len(diffs),
        "queue_left": depth,
        "p50_ms": round(percentile(diffs, 50), 2),
        "p90_ms": round(percentile(diffs, 90), 2),
        "p99_ms": round(percentile(diffs, 99), 2),
        "max_ms": round(diffs[-1], 2) if diffs else None,
        "min_ms": round(diffs[0], 2) if diffs else None,
        "negative_share": round(sum(d < 0 for d in diffs) / len(diffs), 4) if diffs else None,
        "request_p50_ms": round(result["request_p50_ms"], 2),
        "request_p99_ms": round(result["request_p99_ms"], 2),
        "client_late_p99_ms": round(result["late_p99_ms"], 2),
        "client_late_max_ms": round(result["late_max_ms"], 2),
        "receiver_cpu": round(cpu_s[0] / wall, 3),
        "worker_cpu": round(cpu_s[1] / wall, 3),
        "receiver_vmhwm_mb": round(mem[0].get("VmHWM", 0) / 1024, 1),
        "worker_vmhwm_mb": round(mem[1].get("VmHWM", 0) / 1024, 1),
        # Cores busy machine-wide during the run (client, receiver, worker, redis, others).
        "machine_busy_cores": round(busy, 2),
        # ... of which not client, receiver, worker or redis-server: other users of the box.
        "other_cores": round(max(0.0, busy - ours / wall), 2),
        "busy_cores_before": quiet,
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| worker | events | p50 ms | p90 ms | p99 ms | max ms | 2xx->handler < 0 | "
        "request p99 ms | client late p99 ms | worker CPU | worker RSS peak MB | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['mode']} | {r['events']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | "
            f"{r['max_ms']} | {r['negative_share']:.1%} | {r['request_p99_ms']} | "
            f"{r['client_late_p99_ms']} | {r['worker_cpu']:.0%} | {r['worker_vmhwm_mb']} | "
            f"{r['other_cores']:.0%} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds at that rate")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up")
    parser.add_argument("--modes", default="wake,poll")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each mode")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(ALL_MODES):
        raise SystemExit(f"unknown modes: {sorted(set(modes) - set(ALL_MODES))}")
    if args.duration > 120 or args.rate > 20_000 or args.repeat > 5:
        raise SystemExit("keep it bounded: --duration <= 120, --rate <= 20000, --repeat <= 5")
    os.chdir(ROOT)
    ensure_apt("redis-server", "redis-server")
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(json.dumps(machine()), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="ringez-latency-") as tmp:
        for mode in [m for _ in range(args.repeat) for m in modes]:
            result = run_mode(mode, args, Path(tmp))
            results.append(result)
            print(json.dumps(result), flush=True)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
