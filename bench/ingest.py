"""Ingest throughput: the service's receiver against the straightforward design and a bare ceiling.

For every round and design: a fresh redis-server, one receiver process, a short wrk warm-up
on its own bodies, FLUSHALL, then `wrk -c64` for --duration seconds over a file of
--requests pre-signed unique bodies (bench/wrk_signed.lua). Every request's signature is
verified for real by the receiver; a body is only repeated if a wrk thread runs out of
them, and those duplicates are counted (accepted jobs are counted in Redis afterwards).

Designs:
  bare             bench/baseline_receiver.py --design bare: read body, answer 200
  straightforward  bench/baseline_receiver.py --design straightforward: HMAC, arq enqueue_job
  ringez           python -m ringez_worker.worker.cli serve (LOG_LEVEL=INFO: one log line per event)
  ringez-warn      the same with LOG_LEVEL=WARNING (shows what the per-event log line costs)
  ringez-otel      ringez with tracing on: every request traced (always_on), OTLP/HTTP to a
                   stand-in collector (bench/otlp_sink.py); needs the `otel` extra
  ringez-otel-10   the same, sampling 10 % of traces (OTEL_TRACES_SAMPLER=traceidratio)
  ringez-base      ringez from another checkout (--base-tree, --base-python): the same
                   service before a change, measured side by side with it

Reports req/s, wrk's latency percentiles, duplicates, receiver peak RSS (VmHWM) and the
CPU seconds used by the receiver, redis-server and wrk. Loopback only, bounded, stops
by itself (installs wrk with apt-get when it is missing).

    python bench/ingest.py                      # 2 rounds x 4 designs, 10 s each
    python bench/ingest.py --duration 5 --rounds 1 --designs bare,ringez
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
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
    wait_quiet,
)
from ringez_worker.sandbox.redis_server import RedisServer, free_port  # noqa: E402

LUA = ROOT / "bench" / "wrk_signed.lua"
QUEUES = {
    "straightforward": "arq:queue",
    "ringez": "ringez:queue",
    "ringez-warn": "ringez:queue",
    "ringez-otel": "ringez:queue",
    "ringez-otel-10": "ringez:queue",
    "ringez-base": "ringez:queue",
}
ALL_DESIGNS = ("bare", "straightforward", "ringez", "ringez-warn")
EXTRA_DESIGNS = ("ringez-otel", "ringez-otel-10", "ringez-base")
# Where ringez-otel exports (bench/otlp_sink.py, started by main when that design runs).
SINK_PORT = 4399
# Set by main from --base-tree / --base-python.
BASE: dict[str, Any] = {}


def write_requests(path: Path, count: int, tag: str) -> None:
    """`count` lines of "<signature> <body>", every body unique and stamped now."""
    with path.open("w") as f:
        for i in range(count):
            body, sig = signed_request(f"call_{tag}_{i}")
            f.write(f"{sig} {body.decode()}\n")


def receiver(design: str, port: int, redis_url: str, log_dir: Path) -> Service:
    env = {"REDIS_URL": redis_url, "RINGEZ_WEBHOOK_SECRET": SECRET}
    if design in ("bare", "straightforward"):
        argv = ["bench/baseline_receiver.py", "--design", design, "--port", str(port)]
        return Service(design, [*argv, "--redis-url", redis_url], env, log_dir)
    env["LOG_LEVEL"] = "WARNING" if design == "ringez-warn" else "INFO"
    # Tracing off unless this design turns it on, whatever this shell has set.
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_EXPORTER_OTLP_ENDPOINT="")
    if design.startswith("ringez-otel"):
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{SINK_PORT}",
            OTEL_TRACES_SAMPLER="always_on",
            OTEL_SERVICE_NAME="ringez-bench",
        )
        if design == "ringez-otel-10":
            env.update(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1")
    argv = ["-m", "ringez_worker.worker.cli", "serve", "--port", str(port)]
    if design == "ringez-base":
        return Service(design, argv, env, log_dir, python=BASE["python"], cwd=BASE["tree"])
    return Service(design, argv, env, log_dir)


def run_wrk(
    wrk: str, url: str, requests_file: Path, threads: int, connections: int, seconds: float
) -> tuple[dict[str, Any], float]:
    """wrk's BENCH_JSON summary and the CPU seconds wrk itself used."""
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{round(seconds)}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(requests_file),
        str(threads),
    ]
    before = os.times()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    after = os.times()
    wrk_cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON ")), wrk_cpu
    raise SystemExit(f"wrk gave no summary:\n{proc.stdout}\n{proc.stderr}")


class RssSampler(threading.Thread):
    """Max VmRSS of a pid, sampled every 100 ms until stopped."""

    def __init__(self, service: Service) -> None:
        super().__init__(daemon=True)
        self.service = service
        self.max_rss_kb = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.1):
            self.max_rss_kb = max(self.max_rss_kb, self.service.memory_kb().get("VmRSS", 0))

    def stop(self) -> int:
        self._stop_event.set()
        self.join(2)
        return self.max_rss_kb


def one_run(
    design: str,
    args: argparse.Namespace,
    wrk: str,
    main_file: Path,
    warm_file: Path,
    log_dir: Path,
) -> dict[str, Any]:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        port = free_port()
        svc = receiver(design, port, server.url, log_dir)
        try:
            try:
                wait_for_port(port)
            except SystemExit as exc:
                raise SystemExit(f"{design}: {exc}\n{svc.tail()}") from None
            url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
            run_wrk(wrk, url, warm_file, args.threads, args.connections, args.warmup)
            client.flushall()
            quiet = wait_quiet()
            redis_pid = server.process.pid if server.process else 0
            cpu0, rcpu0, busy0 = svc.cpu(), cpu_seconds(redis_pid), machine_busy_seconds()
            sampler = RssSampler(svc)
            sampler.start()
            spy = profile(svc, design, args) if args.profile else None
            summary, wrk_cpu = run_wrk(
                wrk, url, main_file, args.threads, args.connections, args.duration
            )
            max_rss = sampler.stop()
            if spy is not None:
                spy.wait(60)
            cpu, rcpu = svc.cpu() - cpu0, cpu_seconds(redis_pid) - rcpu0
            busy = machine_busy_seconds() - busy0
            memory = svc.memory_kb()
            if not svc.alive():
                raise SystemExit(f"{design} died:\n{svc.tail()}")
            queue = QUEUES.get(design)
            accepted = int(client.zcard(queue)) if queue else None
        finally:
            svc.stop()
            client.close()
    seconds = summary["duration_us"] / 1e6
    ok = summary["requests"] - summary["errors_status"]
    result: dict[str, Any] = {
        "design": design,
        "req_per_s": round(summary["requests"] / seconds, 1),
        "requests": summary["requests"],
        "non_2xx": summary["errors_status"],
        "socket_errors": sum(
            summary[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")
        ),
        "accepted_jobs": accepted,
        # Requests answered 2xx that did not create a job: repeats of an already queued body.
        "duplicates": None if accepted is None else max(0, ok - accepted),
        "p50_ms": summary["lat_p50_us"] / 1000,
        "p90_ms": summary["lat_p90_us"] / 1000,
        "p99_ms": summary["lat_p99_us"] / 1000,
        "p999_ms": summary["lat_p999_us"] / 1000,
        "max_ms": summary["lat_max_us"] / 1000,
        "receiver_cpu_s": round(cpu, 2),
        "redis_cpu_s": round(rcpu, 2),
        "wrk_cpu_s": round(wrk_cpu, 2),
        # Everything else the machine did meanwhile (other users of this box, the kernel).
        "other_cpu_s": round(max(0.0, busy - cpu - rcpu - wrk_cpu), 2),
        "seconds": round(seconds, 2),
        "receiver_vmhwm_mb": round(memory.get("VmHWM", 0) / 1024, 1),
        "receiver_max_rss_mb": round(max_rss / 1024, 1),
        "thread_wraps": summary["thread_wraps"],
        "busy_cores_before": quiet,
    }
    return result


def profile(svc: Service, design: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """py-spy samples the receiver during the measured run (collapsed stacks, with idle)."""
    args.profile.mkdir(parents=True, exist_ok=True)
    out = args.profile / f"{design}.txt"
    spy = Path(sys.executable).parent / "py-spy"
    argv = [str(spy), "record", "-p", str(svc.pid), "-d", str(args.duration), "-r", "250"]
    argv += ["-f", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, top: int = 25) -> str:
    """Inclusive and self share of samples per function, from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0] for f in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"{path.name}: {total} samples", "  inclusive:"]
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {n / total:6.1%}  {frame}")
    lines.append("  self:")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {n / total:6.1%}  {frame}")
    return "\n".join(lines)


def table(results: list[dict[str, Any]], designs: list[str]) -> str:
    """Median run (by req/s) of each design, as a markdown table."""
    rows = [
        "| design | req/s | x straightforward | p50 ms | p99 ms | max ms | non-2xx | dup | "
        "RSS peak MB | receiver CPU | redis CPU | wrk CPU | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    medians: dict[str, dict[str, Any]] = {}
    for design in designs:
        runs = sorted((r for r in results if r["design"] == design), key=lambda r: r["req_per_s"])
        if runs:
            medians[design] = runs[(len(runs) - 1) // 2]
    base = medians.get("straightforward", {}).get("req_per_s")
    for design, r in medians.items():
        ratio = f"{r['req_per_s'] / base:.2f}" if base else "-"
        secs = r["seconds"]
        rows.append(
            f"| {design} | {r['req_per_s']:,.0f} | {ratio} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['non_2xx']} | "
            f"{r['duplicates'] if r['duplicates'] is not None else '-'} | "
            f"{r['receiver_vmhwm_mb']} | {r['receiver_cpu_s'] / secs:.0%} | "
            f"{r['redis_cpu_s'] / secs:.0%} | {r['wrk_cpu_s'] / secs:.0%} | "
            f"{r['other_cpu_s'] / secs:.0%} |"
        )
    return "\n".join(rows)


@contextlib.contextmanager
def _sink(designs: list[str], tmp: str) -> Iterator[None]:
    """The stand-in collector, for as long as ringez-otel may run."""
    if not any(d.startswith("ringez-otel") for d in designs):
        yield
        return
    sink = Service("otlp-sink", ["bench/otlp_sink.py", "--port", str(SINK_PORT)], {}, Path(tmp))
    try:
        wait_for_port(SINK_PORT)
        yield
        with urllib.request.urlopen(f"http://127.0.0.1:{SINK_PORT}/stats", timeout=5) as resp:
            print(f"# otlp sink received {resp.read().decode()}", flush=True)
    finally:
        sink.popen.terminate()
        sink.popen.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each design, interleaved")
    parser.add_argument("--requests", type=int, default=500_000, help="unique signed bodies")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--designs", default=",".join(ALL_DESIGNS))
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy each receiver; stacks go here"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write all runs here")
    parser.add_argument(
        "--base-tree", type=Path, default=None, help="ringez-base: a checkout (git archive)"
    )
    parser.add_argument(
        "--base-python", default=None, help="ringez-base: a venv's python with it installed -e"
    )
    args = parser.parse_args()
    designs = [d for d in args.designs.split(",") if d]
    unknown = set(designs) - set(ALL_DESIGNS) - set(EXTRA_DESIGNS)
    if unknown:
        raise SystemExit(f"unknown designs: {sorted(unknown)}")
    if "ringez-base" in designs:
        if args.base_tree is None or args.base_python is None:
            raise SystemExit("ringez-base needs --base-tree and --base-python")
        BASE.update(tree=args.base_tree.resolve(), python=args.base_python)
    if args.duration > 120 or args.rounds > 5:
        raise SystemExit("keep it bounded: --duration <= 120, --rounds <= 5")
    os.chdir(ROOT)
    wrk = ensure_apt("wrk", "wrk")
    ensure_apt("redis-server", "redis-server")
    print(json.dumps(machine()), flush=True)

    with tempfile.TemporaryDirectory(prefix="ringez-ingest-") as tmp, _sink(designs, tmp):
        work = Path(tmp)
        main_file, warm_file = work / "requests.txt", work / "warmup.txt"
        started = time.monotonic()
        write_requests(main_file, args.requests, "main")
        write_requests(warm_file, 40_000, "warm")
        print(f"# {args.requests} signed bodies in {time.monotonic() - started:.1f} s", flush=True)
        results = []
        for round_no in range(args.rounds):
            # Alternate the order so no design always runs first (or last) on a warm machine.
            order = designs if round_no % 2 == 0 else list(reversed(designs))
            for design in order:
                result = one_run(design, args, wrk, main_file, warm_file, work)
                result["round"] = round_no + 1
                results.append(result)
                print(json.dumps(result), flush=True)
    print()
    print(table(results, designs))
    by = {d: [r["req_per_s"] for r in results if r["design"] == d] for d in designs}
    print()
    for design, values in by.items():
        print(f"# {design}: req/s per round {values}, median {statistics.median(values):,.0f}")
    if args.profile:
        for design in designs:
            if (args.profile / f"{design}.txt").exists():
                print(summarize_profile(args.profile / f"{design}.txt"))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
