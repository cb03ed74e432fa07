"""ringez-agent-worker: receive Ringez webhooks, queue them on Redis, run agents on them.

The layers, each importing only those before it (contracts in pyproject.toml):
base (this package's own modules: settings, logs, redis, keys, signature) -> `api` (the
Ringez REST client) -> `handlers` -> `agents` -> `worker` (receiver, queue, worker, CLI);
`sandbox` is the local Ringez and `dev`, composed by the CLI only.
"""

__version__ = "0.2.0"
