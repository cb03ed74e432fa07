"""`python -m bench.chaos`: the command line of the chaos run (see bench/chaos/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.chaos.run import ChaosConfig, run_chaos  # noqa: E402


def parse(argv: list[str] | None = None) -> ChaosConfig:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=(sys.modules["bench.chaos"].__doc__ or "")
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--events", type=int, default=defaults.events, help="distinct events to send")
    add("--workers", type=int, default=defaults.workers, help="worker processes")
    add("--kill-every", type=float, default=defaults.kill_every, help="seconds between kills")
    add("--seed", type=int, default=defaults.seed)
    add("--rate", type=float, default=defaults.rate, help="events sent per second")
    add("--no-redis-restart", dest="redis_restart", action="store_false")
    add("--redis-stop", choices=("kill", "term"), default=defaults.redis_stop)
    add("--redis-down", dest="redis_down_seconds", type=float, default=1.0)
    add(
        "--done-fault",
        dest="done_fault_seconds",
        type=float,
        default=defaults.done_fault_seconds,
        help="seconds completion-record writes are refused (0: off)",
    )
    add(
        "--full-redis",
        dest="full_redis_seconds",
        type=float,
        default=defaults.full_redis_seconds,
        help="seconds Redis is full (0: off)",
    )
    add("--rate-503", type=float, default=defaults.rate_503)
    add("--rate-429", type=float, default=defaults.rate_429)
    add("--fail-rate", type=float, default=defaults.fail_rate, help="handler first-try failures")
    add(
        "--slow-rate",
        type=float,
        default=defaults.slow_rate,
        help="share of deliveries whose chaos.effect sleeps 1.5 leases (lease-loss probe)",
    )
    add(
        "--burst",
        type=int,
        default=defaults.burst,
        help="events sent all at once (unpaced) at --burst-at of the load: a traffic spike",
    )
    add("--burst-at", type=float, default=defaults.burst_at)
    add("--duplicate-rate", type=float, default=defaults.duplicate_rate)
    add("--lease", dest="lease_seconds", type=float, default=defaults.lease_seconds)
    add("--job-max-tries", type=int, default=defaults.job_max_tries)
    add("--max-seconds", type=float, default=defaults.max_seconds, help="the whole run")
    add("--log-level", default=defaults.log_level, help="of the service's processes")
    add("--run-dir", default=None, help="keep logs and Redis data here")
    add("--keep-logs", action="store_true", help="keep the run directory even on success")
    args = vars(parser.parse_args(argv))
    return dataclasses.replace(defaults, **args)


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    from ringez_worker.logs import configure_logging

    # The sandbox runs in this process: only its warnings, not a line per request.
    configure_logging("WARNING", "console")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run_chaos(config))
    print(result.render(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
