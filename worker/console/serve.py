"""Runs the console as its own process (`ringez-worker console`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from aiohttp import web

from ringez_worker.logs import get_logger
from ringez_worker.settings import Settings

log = get_logger("ringez.console")


def run_console(
    settings: Settings, host: str | None, port: int | None, secrets: Iterable[str] = ()
) -> int:
    """Serve until interrupted; 2 (with one line naming the variable) without CONSOLE_TOKEN."""
    from ringez_worker.worker.console.app import create_console_app

    if settings.console_token is None:
        # A loopback bind is no protection behind a reverse proxy on the same host.
        print(
            "ringez-worker console: CONSOLE_TOKEN is not set; set it to a long random "
            "string (the console shows transcripts and can replay events)",
            file=sys.stderr,
        )
        return 2
    host = host or settings.console_host
    port = port if port is not None else settings.console_port
    log.info("console.starting", host=host, port=port, base_path=settings.console_base_path or "/")
    web.run_app(
        create_console_app(settings, secrets=secrets),
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=5,
    )
    return 0
