"""ringez-agent-worker: receive Ringez webhooks, queue them on Redis, run them with arq."""

__version__ = "0.1.0"
