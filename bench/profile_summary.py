"""Where a drain's worker time went, from py-spy's collapsed stacks (`--format raw`).

    python bench/profile_summary.py /tmp/ringez-drain-peers-*/ringez-r1.pyspy.txt

Two views of the same samples (idle time is not sampled, so shares are of CPU time):

- by step: walking each stack from its leaf up, the first frame that names a step of
  the job's path (the handler's INCR, the completion record, arq's finish, the typed
  parse ...) takes the sample, so the Redis client time inside `_mark_done` counts
  as the completion record's;
- by kind of work: the leaf frame alone (self time), grouped by what it is (redis-py,
  socket writes, asyncio, the event loop itself, JSON, pydantic, logging ...).

Record with py-spy in blocking mode (the default, as `bench/drain_peers.py --profile`
does): `--nonblocking` samples of coroutine stacks under uvloop came back cut short
(about half had no root frame) and could not be attributed to a step.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

Rule = tuple[str, Callable[[str], bool]]


def _func(*names: str) -> Callable[[str], bool]:
    return lambda frame: frame.split(" (", 1)[0] in names


def _file(*parts: str) -> Callable[[str], bool]:
    """The frame's file path contains one of `parts` as whole path components."""

    def match(frame: str) -> bool:
        path = "/" + frame.split(" (", 1)[-1]
        return any("/" + p in path for p in parts)

    return match


def _lines(name: str, first: int, last: int) -> Callable[[str], bool]:
    """Function `name` while at a line in first..last (one step of a long coroutine)."""

    def match(frame: str) -> bool:
        found = re.match(r"(.*) \(.*:(\d+)\)$", frame)
        return bool(found) and found[1] == name and first <= int(found[2]) <= last

    return match


# Innermost match wins; each label says which Redis commands the step sends.
STEPS: list[Rule] = [
    ("handler: the job's INCR", _func("incr")),
    (
        "completion record + delivery log "
        "(`_mark_done`: MULTI HSET EXPIRE XADD HINCRBY EXPIRE EXEC)",
        _func("Dispatcher._mark_done"),
    ),
    ("arq finish_job (MULTI ZREM ZREM DEL EXEC)", _func("Worker.finish_job")),
    (
        "end of jobs, batched (`_Finisher`: one `_FINISH` EVALSHA per group of jobs)",
        _func("_Finisher.end", "_Finisher._run", "_Finisher._write"),
    ),
    ("typed event parse (`parse_event`, pydantic)", _func("parse_event")),
    (
        "JSON decode (job record, body)",
        _func("loads_job", "deserialize_job_raw", "_payload", "Job.from_record"),
    ),
    ("logging (structlog bind, JSON lines)", _file("structlog/", "ringez_worker/logs.py")),
    ("metrics (prometheus_client)", _file("prometheus_client/")),
    (
        "claim (Lua: before ZRANGEBYSCORE EXISTS PSETEX; after ZRANGEBYSCORE MGET SET ZADD) "
        "and task start",
        _func("RingezWorker._claim_and_start"),
    ),
    ("lease renewal (PEXPIRE pipeline / `_RENEW` script)", _func("RingezWorker._renew_leases")),
    (
        "heartbeat, presence, wake listener",
        _func("RingezWorker._beat", "RingezWorker._presence", "RingezWorker._listen"),
    ),
    (
        "poll loop, waits, reaping",
        _func("RingezWorker._poll_iteration", "RingezWorker._wait_for_wake", "RingezWorker._reap"),
    ),
    (
        "dispatch's own Python (routing, Context, gather, timeout, bind)",
        _func(
            "Dispatcher._run",
            "Dispatcher._run_handler",
            "Dispatcher._dispatch",
            "Dispatcher._dispatch_safely",
            "Dispatcher.dispatch",
            "handle_event",
        ),
    ),
    (
        "the job's run around dispatch (`RingezWorker._run_claimed`: ctx, timeout, counters)",
        _func("RingezWorker._run_claimed"),
    ),
    # arq 0.28's run_job: lines 479-490 are its first pipeline.
    (
        "arq run_job: start pipeline (MULTI GET INCR EXPIRE EXEC)",
        _lines("Worker.run_job", 479, 490),
    ),
    ("arq run_job: the rest (deserialize, wait_for, log, counters)", _func("Worker.run_job")),
    ("event loop itself (uvloop: epoll, callbacks, transports)", _func("Runner.run")),
]

KINDS: list[Rule] = [
    ("redis-py (command packing, reply parsing, pool, retry)", _file("redis/", "hiredis")),
    ("socket reads and writes (asyncio streams over uvloop)", _file("asyncio/streams.py")),
    ("event loop itself (uvloop C, seen as Runner.run)", _func("Runner.run")),
    ("asyncio (tasks, timeouts, locks, gather)", _file("asyncio/")),
    ("pydantic (typed event)", _file("pydantic/", "handlers/events.py")),
    ("logging (structlog, ringez_worker.logs)", _file("structlog/", "ringez_worker/logs.py")),
    ("metrics (prometheus_client)", _file("prometheus_client/")),
    ("JSON and job records (orjson calls)", _file("ringez_worker/jobs.py")),
    ("arq's own Python", _file("arq/")),
    ("the project's worker and dispatcher Python", _file("worker/", "ringez_worker/")),
]


def read(path: Path) -> list[tuple[list[str], int]]:
    """(frames root to leaf, sample count) per line of py-spy's raw output."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]  # py-spy's first frame names the process
        out.append((frames, int(count)))
    return out


def classify(frames: list[str], rules: list[Rule], leaf_only: bool) -> str:
    for frame in reversed(frames[-1:] if leaf_only else frames):
        for label, match in rules:
            if match(frame):
                return label
    return "other"


def summary(path: Path) -> str:
    everything = read(path)
    # Only the event loop's thread: the worker's other thread is the log flusher, whose
    # time.sleep py-spy reported as active in one run on a busy box (13 % of samples).
    samples = [(f, n) for f, n in everything if not f or f[0].split(" (")[0] != "Thread._bootstrap"]
    total = sum(n for _, n in samples)
    left_out = sum(n for _, n in everything) - total
    lines = [f"{path.name}: {total} samples of the main thread ({left_out} of others left out)"]
    for title, rules, leaf_only in (("by step", STEPS, False), ("by kind", KINDS, True)):
        shares: Counter[str] = Counter()
        for frames, n in samples:
            shares[classify(frames, rules, leaf_only)] += n
        lines.append(f"  {title}:")
        lines += [f"    {n / total:6.1%}  {label}" for label, n in shares.most_common()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    for path in parser.parse_args().files:
        print(summary(path))


if __name__ == "__main__":
    main()
