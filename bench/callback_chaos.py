"""The callback queue's chaos run at size (issue 16): 300 requests over 10 agents, two
receivers, three worker processes SIGKILLed while they assign and dial, every webhook
delivered twice. Loopback only, bounded, its own redis-server.

    python bench/callback_chaos.py [--requests 300 --agents 10 --workers 3 --kills 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ringez_worker.sandbox.redis_server import RedisServer  # noqa: E402
from tests.callback_chaos import agents_roster, run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kill-every", type=float, default=0.3, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory() as work:
            r = asyncio.run(
                run_chaos(
                    server.url,
                    Path(work),
                    requests=args.requests,
                    agents=agents_roster(args.agents),
                    workers=args.workers,
                    kills=args.kills,
                    kill_every=args.kill_every,
                    seed=args.seed,
                    deadline_s=600,
                )
            )
    finally:
        server.cleanup()
    per_request = sorted(r.calls_per_request.values())
    print(f"requests {r.requests}, agents {args.agents}, workers {args.workers}")
    print(f"  final states               {dict(r.states)}")
    print(f"  calls created / assignments {sum(per_request)} / {sum(r.tries.values())}")
    print(f"  customers called           {len(per_request)}")
    print(f"  calls per customer         min {per_request[0]} max {per_request[-1]}")
    print(f"  over an agent's maximum    {len(r.over_capacity)}")
    print(f"  answered, not transferred  {r.untransferred}")
    print(f"  slots left taken           {sum(r.load_left.values())}")
    print(f"  workers SIGKILLed          {r.kills}")
    print(f"  wall                       {r.seconds:.1f} s")
    print("RESULT:", "PASS" if not r.problems else "FAIL " + "; ".join(r.problems))
    return 0 if not r.problems else 1


if __name__ == "__main__":
    sys.exit(main())
