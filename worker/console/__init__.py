"""The web console (`ringez-worker console`): deliveries, calls, failed events, overview."""

from ringez_worker.worker.console.app import create_console_app

__all__ = ["create_console_app"]
