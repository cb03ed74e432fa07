"""The campaign's chaos run at size (issue 15): 200 contacts, three worker processes
SIGKILLed while they dial and play, every webhook delivered twice, 5 % of the API's
answers 503, a Redis restart (AOF on, graceful) mid-run, and a binding calls-per-minute
limit. Loopback only, bounded, its own redis-server.

    python bench/campaign_chaos.py [--contacts 200 --workers 3 --kills 20 --cpm 120]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ringez_worker.sandbox.redis_server import RedisServer  # noqa: E402
from tests.campaign_chaos import run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--max-concurrent", type=int, default=10)
    parser.add_argument("--cpm", type=int, default=120, help="calls per minute")
    parser.add_argument("--no-redis-restart", action="store_true")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    server = RedisServer(appendonly=True).start()

    async def restart() -> None:
        # SIGTERM: Redis writes its AOF out and exits; the same port and data come back.
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)

    try:
        r = asyncio.run(
            run_chaos(
                server.url,
                contacts=args.contacts,
                workers=args.workers,
                kills=args.kills,
                kill_every=1.0,
                max_concurrent=args.max_concurrent,
                calls_per_minute=args.cpm,
                seed=args.seed,
                deadline_s=600,
                restart_redis=None if args.no_redis_restart else restart,
            )
        )
    finally:
        server.stop()
    print(f"contacts {r.contacts}, workers {args.workers}, max_concurrent {r.max_concurrent}")
    print(f"  final states                {dict(r.states)}")
    print(f"  calls created / attempts    {r.calls} / {r.attempts}")
    print(f"  most calls for one attempt  {r.most_per_attempt}")
    print(f"  most calls for one number   {r.most_per_number}")
    print(f"  most calls at once          {r.most_at_once} (limit {r.max_concurrent})")
    print(f"  most calls in a minute      {r.most_in_a_minute} (limit {r.calls_per_minute})")
    print(f"  wrong outcomes              {len(r.wrong_outcome)}")
    print(f"  left live / reserved        {r.live_left} / {r.reserved_left}")
    print(f"  workers SIGKILLed           {r.kills}")
    print(f"  Redis restarts              {r.restarts}")
    print(f"  503s injected               {r.injected_503}")
    print(f"  wall                        {r.seconds:.1f} s")
    print("RESULT:", "PASS" if not r.problems else "FAIL " + "; ".join(r.problems))
    return 0 if not r.problems else 1


if __name__ == "__main__":
    sys.exit(main())
