"""How many events per second one Redis can carry: measured CPU cost per event, and a ceiling.

Two measurements, each on a fresh redis-server configured as in production (AOF on,
`appendfsync everysec`), except that automatic AOF rewrites are off
(`auto-aof-rewrite-percentage 0`): a rewrite shrinks the AOF to the live data and would
make the bytes written per event look smaller than they are:

  e2e      the real service: --receivers `ringez-worker serve` and --workers
           `ringez-worker worker` processes (no-op handler, LOG_LEVEL=WARNING), one wrk
           per receiver POSTing pre-signed unique bodies for --duration seconds, then
           wait until the queue is empty. From Redis' own INFO counters it reports, per
           acknowledged event: main-thread CPU microseconds (so the projected ceiling
           1e6 / us_per_event at 100 % of Redis' one core), commands and round trips
           by command, network bytes, and memory still held once the event is handled:
           its dedupe record (a field in a timestamp-bucketed hash, `rz:d:<bucket>:<shard>`,
           kept 72 h 5 min past the end of its 10-minute bucket) and its completion record
           (`rz:done:<id>`, kept DONE_RECORD_TTL_SECONDS, 1 h, when every handler
           succeeded). Accepted events are counted as the fields of the dedupe buckets
           (HLEN), not as keys: one bucket holds many deliveries.
  enqueue  the receiver's write alone, pushed to Redis' limit: redis-benchmark runs the
           real enqueue script (`_ENQUEUE` of worker/queue.py, EVALSHA: per event HSETNX into
           a dedupe bucket + PEXPIREAT + PSETEX job + ZADD, one PUBLISH per call) with
           random delivery ids and real-sized job bodies, --bench-batch events per call
           (the receiver's group commit sends one call per batch), pipelined. All events
           go to one dedupe bucket (redis-benchmark cannot pick one of 256 shards at
           random); at these rates every shard of a 10-minute bucket outgrows a listpack
           within seconds anyway, so HSETNX on a hashtable is what production runs too.
           Redis' CPU share during the run shows whether Redis (and not the client) was
           the limit.

On a 2-core machine the Python processes saturate the CPU long before Redis does,
so `e2e` cannot push Redis to its limit directly; the cost per event it measures is
what extrapolates. Loopback only, bounded, stops by itself.

    python bench/redis_capacity.py                       # both, 2 receivers, 2 workers, 10 s
    python bench/redis_capacity.py --mode e2e --receivers 1 --workers 1 --duration 5
    python bench/redis_capacity.py --mode enqueue --bench-batch 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    SECRET,
    WEBHOOK_PATH,
    Service,
    cpu_seconds,
    ensure_apt,
    machine,
    machine_busy_seconds,
    signed_request,
    wait_for_port,
)
from ringez_worker.jobs import job_bytes  # noqa: E402
from ringez_worker.keys import BUCKET_MS, Keys  # noqa: E402
from ringez_worker.sandbox.redis_server import RedisServer, free_port  # noqa: E402
from ringez_worker.worker.queue import _ENQUEUE  # noqa: E402

LUA = ROOT / "bench" / "wrk_signed.lua"
# AOF as docs/scaling.md measured it (appendonly yes, appendfsync everysec; deploy/ now
# ships `always`, and so does RedisServer with AOF), with no automatic rewrite during a run
# (see the module docstring).
REDIS_ARGS = ("--auto-aof-rewrite-percentage", "0", "--appendfsync", "everysec")
DEDUPE_TTL_MS = (72 * 3600 + 300) * 1000  # DEDUPE_WINDOW_SECONDS + CLOCK_SKEW_SECONDS
JOB_TTL_MS = 7 * 24 * 3600 * 1000


def snapshot(client: redis.Redis, pid: int) -> dict[str, Any]:
    """Redis' own counters: CPU, commands, reads (round trips), bytes, memory."""
    cpu = client.info("cpu")
    stats = client.info("stats")
    commands = client.info("commandstats")
    return {
        "t": time.monotonic(),
        "main_cpu_s": cpu["used_cpu_user_main_thread"] + cpu["used_cpu_sys_main_thread"],
        "process_cpu_s": cpu_seconds(pid),
        "machine_busy_s": machine_busy_seconds(),
        "commands": stats["total_commands_processed"],
        "reads": stats["total_reads_processed"],
        "net_in": stats["total_net_input_bytes"],
        "net_out": stats["total_net_output_bytes"],
        "used_memory": client.info("memory")["used_memory"],
        "aof_bytes": client.info("persistence").get("aof_current_size", 0),
        "aof_rewrites": client.info("persistence").get("aof_rewrites", 0),
        "by_command": {
            name.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for name, v in commands.items()
        },
    }


def per_event(before: dict[str, Any], after: dict[str, Any], events: int) -> dict[str, Any]:
    seconds = after["t"] - before["t"]
    main_cpu = after["main_cpu_s"] - before["main_cpu_s"]
    by_command = {}
    for name, (calls, usec) in after["by_command"].items():
        calls0, usec0 = before["by_command"].get(name, (0, 0))
        if calls - calls0 > 0:
            by_command[name] = {
                "calls_per_event": round((calls - calls0) / events, 3),
                "exec_us_per_event": round((usec - usec0) / events, 2),
            }
    us_per_event = main_cpu / events * 1e6
    return {
        "seconds": round(seconds, 2),
        "redis_main_thread_cpu_s": round(main_cpu, 2),
        "redis_process_cpu_s": round(after["process_cpu_s"] - before["process_cpu_s"], 2),
        "redis_core_share": round(main_cpu / seconds, 3),
        "machine_busy_cores": round(
            (after["machine_busy_s"] - before["machine_busy_s"]) / seconds, 2
        ),
        "redis_cpu_us_per_event": round(us_per_event, 2),
        "projected_events_per_s_at_100pct_core": round(1e6 / us_per_event),
        "commands_per_event": round((after["commands"] - before["commands"]) / events, 2),
        "reads_per_event": round((after["reads"] - before["reads"]) / events, 3),
        "net_in_bytes_per_event": round((after["net_in"] - before["net_in"]) / events),
        "net_out_bytes_per_event": round((after["net_out"] - before["net_out"]) / events),
        "aof_bytes_per_event": round((after["aof_bytes"] - before["aof_bytes"]) / events),
        "aof_rewrites": after["aof_rewrites"] - before["aof_rewrites"],
        "by_command": dict(sorted(by_command.items(), key=lambda kv: -kv[1]["calls_per_event"])),
    }


def count_keys(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=10_000))


def sample_memory(client: redis.Redis, pattern: str, n: int = 200) -> float | None:
    """Mean MEMORY USAGE of up to `n` keys matching `pattern`."""
    sizes = []
    for key in client.scan_iter(match=pattern, count=1000):
        sizes.append(client.memory_usage(key, samples=0) or 0)
        if len(sizes) >= n:
            break
    return round(sum(sizes) / len(sizes), 1) if sizes else None


def count_fields(client: redis.Redis, pattern: str) -> tuple[int, int]:
    """(keys, hash fields in them) for the hashes matching `pattern`."""
    keys = fields = 0
    for key in client.scan_iter(match=pattern, count=10_000):
        keys += 1
        fields += client.hlen(key)
    return keys, fields


def sample_memory_per_field(client: redis.Redis, pattern: str, n: int = 200) -> float | None:
    """MEMORY USAGE of up to `n` hashes matching `pattern`, per field they hold."""
    size = fields = 0
    for i, key in enumerate(client.scan_iter(match=pattern, count=1000)):
        size += client.memory_usage(key, samples=0) or 0
        fields += client.hlen(key)
        if i + 1 >= n:
            break
    return round(size / fields, 1) if fields else None


def sample_ttl_s(client: redis.Redis, pattern: str, n: int = 200) -> tuple[int, int] | None:
    """(min, max) remaining TTL in seconds of up to `n` keys matching `pattern`."""
    ttls = []
    for key in client.scan_iter(match=pattern, count=1000):
        ttls.append(client.ttl(key))
        if len(ttls) >= n:
            break
    return (min(ttls), max(ttls)) if ttls else None


def freed_per_key(client: redis.Redis, pattern: str, per: int | None = None) -> float | None:
    """used_memory freed by deleting every key matching `pattern`, per key (or per `per`)."""
    before = client.info("memory")["used_memory"]
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=10_000):
        batch.append(key)
        if len(batch) == 1000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    if not deleted:
        return None
    time.sleep(0.5)  # UNLINK frees large values (big dedupe buckets) in the background
    return round((before - client.info("memory")["used_memory"]) / (per or deleted), 1)


def write_requests(path: Path, count: int, tag: str) -> None:
    with path.open("w") as f:
        for i in range(count):
            body, sig = signed_request(f"call_{tag}_{i}")
            f.write(f"{sig} {body.decode()}\n")


def wrk_argv(wrk: str, url: str, requests_file: Path, connections: int, seconds: float) -> list:
    return [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{round(seconds)}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(requests_file),
        "1",
    ]


def wrk_summary(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise SystemExit(f"wrk gave no summary:\n{stdout}")


def wait_subscribed(client: redis.Redis, keys: Keys, workers: list[Service]) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if dict(client.pubsub_numsub(keys.wake)).get(keys.wake.encode(), 0) >= len(workers):
            return
        if not all(w.alive() for w in workers):
            break
        time.sleep(0.05)
    raise SystemExit("workers did not start:\n" + "\n".join(w.tail() for w in workers))


def run_e2e(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    wrk = ensure_apt("wrk", "wrk")
    keys = Keys()
    files = []
    # Enough unique bodies that wrk never repeats one (a receiver takes ~12k req/s).
    per_receiver = int(args.duration * args.bodies_per_second)
    for r in range(args.receivers):
        path = log_dir / f"requests-{r}.txt"
        write_requests(path, per_receiver, f"r{r}")
        files.append(path)
    with RedisServer(appendonly=True, extra_args=REDIS_ARGS) as server:
        client = redis.Redis.from_url(server.url)
        env = {
            "REDIS_URL": server.url,
            "RINGEZ_WEBHOOK_SECRET": SECRET,
            "RINGEZ_HANDLERS": "bench.noop_handlers",
            "LOAD_ENTRY_POINTS": "false",
            "WORKER_METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING",
            "RINGEZ_API_KEY": "",
        }
        ports = [free_port() for _ in range(args.receivers)]
        receivers = [
            Service(
                f"serve-{i}",
                ["-m", "ringez_worker.worker.cli", "serve", "--port", str(p)],
                env,
                log_dir,
            )
            for i, p in enumerate(ports)
        ]
        workers = [
            Service(f"worker-{i}", ["-m", "ringez_worker.worker.cli", "worker"], env, log_dir)
            for i in range(args.workers)
        ]
        try:
            for port in ports:
                wait_for_port(port)
            wait_subscribed(client, keys, workers)
            pid = server.process.pid if server.process else 0
            before = snapshot(client, pid)
            procs = [
                subprocess.Popen(
                    wrk_argv(
                        wrk,
                        f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
                        path,
                        args.connections,
                        args.duration,
                    ),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for port, path in zip(ports, files, strict=True)
            ]
            summaries = [wrk_summary(p.communicate(timeout=args.duration + 120)[0]) for p in procs]
            ingest_end = snapshot(client, pid)
            deadline = time.monotonic() + 300
            while client.zcard(keys.queue) and time.monotonic() < deadline:
                time.sleep(0.01)
            left = client.zcard(keys.queue)
            drained = snapshot(client, pid)
            alive = all(s.alive() for s in receivers + workers)
            # A dedupe record is a field of a bucket hash: count fields, not keys.
            buckets, accepted = count_fields(client, "rz:d:*")
            done_records = count_keys(client, "rz:done:*")
            done_ttl = sample_ttl_s(client, "rz:done:*")
            dedupe_sampled = sample_memory_per_field(client, "rz:d:*")
            done_sampled = sample_memory(client, "rz:done:*")
            # Exact bytes per record: used_memory freed by deleting each kind.
            done_bytes = freed_per_key(client, "rz:done:*")
            dedupe_bytes = freed_per_key(client, "rz:d:*", per=accepted)
        finally:
            for s in receivers + workers:
                s.stop()
            client.close()
    if not alive:
        raise SystemExit("a process died:\n" + "\n".join(s.tail() for s in receivers + workers))
    if not accepted:
        raise SystemExit("no event accepted:\n" + "\n".join(s.tail() for s in receivers))
    requests = sum(s["requests"] for s in summaries)
    ingest_s = ingest_end["t"] - before["t"]
    return {
        "mode": "e2e",
        "receivers": args.receivers,
        "workers": args.workers,
        "wrk_connections_per_receiver": args.connections,
        "requests": requests,
        "non_2xx": sum(s["errors_status"] for s in summaries),
        "socket_errors": sum(
            s[k]
            for s in summaries
            for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")
        ),
        "accepted_events": accepted,
        # wrk starts over when it runs out of bodies: those repeats are duplicates (200,
        # nothing queued) and their Redis work is charged to the accepted events. (Requests
        # still in flight when wrk stops were queued but not counted by wrk: hence max.)
        "repeated_bodies": max(0, requests - accepted),
        "left_in_queue": left,
        "ingest_events_per_s": round(accepted / ingest_s, 1),
        "ingest_then_drain_s": round(drained["t"] - before["t"], 2),
        "p99_ms": max(s["lat_p99_us"] for s in summaries) / 1000,
        # Everything Redis did for these events: enqueue, wake-ups, claim, run, finish.
        "per_event": per_event(before, drained, accepted),
        # Memory still held after every event was handled (TTL'd records).
        "retained_bytes_per_event": round(
            (drained["used_memory"] - before["used_memory"]) / accepted, 1
        ),
        "dedupe_records": accepted,
        "dedupe_buckets": buckets,
        # Per dedupe record (bucket bytes / fields in the buckets).
        "dedupe_record_bytes_freed": dedupe_bytes,
        "dedupe_record_bytes_memory_usage": dedupe_sampled,
        "completion_records": done_records,
        "completion_record_ttl_s_min_max": done_ttl,
        "completion_record_bytes_freed": done_bytes,
        "completion_record_bytes_memory_usage": done_sampled,
    }


def run_enqueue(args: argparse.Namespace) -> dict[str, Any]:
    bench = ensure_apt("redis-benchmark", "redis-tools")
    body, _ = signed_request("call_capacity_probe")
    now = int(time.time() * 1000)
    # A real job record (the benchmark's random id stands in for the 64-hex delivery id).
    job = job_bytes("0" * 64, body, now).decode()
    keys = Keys()
    # One dedupe bucket (see the module docstring), expiring as the receiver sets it.
    bucket, _ = keys.dedupe("ab" + "0" * 62, now)
    expires_at = (now // BUCKET_MS + 1) * BUCKET_MS + DEDUPE_TTL_MS
    batch = args.bench_batch
    calls = max(1, args.bench_requests // batch)
    # The script's layout: KEYS = queue, then (dedupe bucket, job key) per event; ARGV =
    # job ttl, wake channel, then (dedupe field, bucket expiry, job, score, id) per event.
    # Every __rand_int__ is drawn on its own; the field is 16 bytes, as the real one.
    script_keys = [keys.queue]
    script_argv = [str(JOB_TTL_MS), keys.wake]
    for _ in range(batch):
        script_keys += [bucket, keys.job("__rand_int__")]
        script_argv += ["0000__rand_int__", str(expires_at), job, str(now), "__rand_int__"]
    with RedisServer(appendonly=True, extra_args=REDIS_ARGS) as server:
        client = redis.Redis.from_url(server.url)
        sha = client.script_load(_ENQUEUE.source)
        pid = server.process.pid if server.process else 0
        argv = [
            bench,
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-c",
            str(args.bench_clients),
            "-P",
            str(args.bench_pipeline),
            "-n",
            str(calls),
            "-r",
            "1000000000",
            "--csv",
            "EVALSHA",
            sha,
            str(len(script_keys)),
            *script_keys,
            *script_argv,
        ]
        before = snapshot(client, pid)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        after = snapshot(client, pid)
        queued = client.zcard(keys.queue)
        deduped = client.hlen(bucket)
        client.close()
    rps = None
    for line in out.stdout.splitlines():
        # "<test name>","rps","avg_latency_ms","min","p50","p95","p99","max"; the name
        # holds the job JSON with its quotes unescaped, so count fields from the right.
        cells = line.strip().strip('"').split('","')
        if line.upper().startswith('"EVALSHA') and len(cells) >= 8:
            rps = float(cells[-7])
    if rps is None:
        raise SystemExit(f"redis-benchmark gave no result:\n{out.stdout}\n{out.stderr}")
    # What Redis ran: redis-benchmark rounds -n up to whole pipelines per client.
    ran = after["by_command"]["evalsha"][0] - before["by_command"].get("evalsha", (0, 0))[0]
    events = ran * batch
    if min(deduped, queued) < events * 0.99:
        # Each random id is drawn on its own, out of 10^9: a few hundred of 500,000 collide
        # (a duplicate field, or two jobs under one id); anything more is a broken call.
        raise SystemExit(f"{events} events sent, {queued} queued, {deduped} dedupe records")
    return {
        "mode": "enqueue",
        "clients": args.bench_clients,
        "pipeline": args.bench_pipeline,
        "events_per_call": batch,
        "calls": events // batch,
        "events": events,
        "queued_jobs": queued,
        "calls_per_s": round(rps),
        "enqueues_per_s": round(rps * batch),
        "job_bytes": len(job),
        "per_event": per_event(before, after, events),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("both", "e2e", "enqueue"), default="both")
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections/receiver")
    parser.add_argument("--bodies-per-second", type=int, default=25_000)
    parser.add_argument("--bench-clients", type=int, default=16)
    parser.add_argument("--bench-pipeline", type=int, default=32)
    parser.add_argument("--bench-requests", type=int, default=500_000, help="events in all")
    parser.add_argument(
        "--bench-batch", type=int, default=1, help="events per script call (group commit)"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="redis-capacity-") as tmp:
        if args.mode in ("both", "e2e"):
            results["e2e"] = run_e2e(args, Path(tmp))
        if args.mode in ("both", "enqueue"):
            results["enqueue"] = run_enqueue(args)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
