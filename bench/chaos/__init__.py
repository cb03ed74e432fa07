"""Chaos run: 10,000 events through the real receiver and killed workers, then count.

Loopback only, bounded in events and time, stops by itself. From the repository root:

    .venv/bin/python -m bench.chaos --events 10000 --workers 2 --kill-every 3 --seed 1

It starts a real `redis-server` (AOF, `appendfsync always`), the local Ringez sandbox
(in this process; 20% of API calls answer 503 and 5% 429), the receiver
(`ringez-worker serve`) and N workers (`ringez-worker worker`, built-in agents plus
`bench.chaos.handlers`). It sends the events through the receiver, signed, retried
until acknowledged; SIGKILLs a worker every few seconds and starts a replacement;
SIGKILLs Redis once mid-run and starts it again on the same port and data directory.
When the queue has drained it counts: events acknowledged vs handled, handler runs per
delivery, transfers per call, charges per low-balance episode; it prints a table and
exits 1 if an acknowledged event was lost or a side effect happened twice.

Modules: `handlers` (what the workers load), `load` (the events), `procs` (Redis and
the service's processes), `run` (orchestration and counting), `report` (the verdict).
`tests/test_chaos.py` runs a small version.
"""
