"""`ringez-worker serve` with proposed performance patches applied in memory (bench only).

Each patch is a literal (old, new) text replacement on the current source of
worker/logs.py, worker/queue.py or worker/receiver.py; the patched source is executed in
place of the module before the receiver is built, so what is measured is exactly the diff
that is proposed. A patch whose `old` text is no longer in the file stops the script
(the source moved on: re-derive the patch). Nothing on disk is changed.

Patches (comma-separated in --patches):
  log-fast        structlog renders our own lines directly (orjson, level filter at the
                  call) instead of through stdlib logging's ProcessorFormatter; stdlib
                  loggers (aiohttp, arq) keep the existing handler
  accepted-debug  the per-event `webhook.accepted` line at DEBUG instead of INFO
  timeout         no asyncio.timeout around request.read() when the body is already complete
  batch           one EVALSHA per group commit (a Lua loop over the batch, PUBLISH inside
                  the script when anything was queued) instead of one EVALSHA per event
  hiredis         (needs batch) that EVALSHA packed by hiredis instead of redis-py's packer
  depth           envelope's nesting check visits containers only (same verdicts)
  overlap         up to 4 group commits in flight at once instead of one at a time

    python bench/patched_serve.py --patches log-fast,timeout,batch --port 8000
    (env as for `ringez-worker serve`: REDIS_URL, RINGEZ_WEBHOOK_SECRET, LOG_LEVEL ...)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Replacement = tuple[str, str, str]  # module, old text, new text

LOG_FAST: list[Replacement] = [
    (
        "worker.logs",
        """    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *pre_chain,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
""",
        """    # Our own lines skip stdlib logging: the level is checked at the call, the line is
    # rendered once with orjson and written straight to the stream.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            Redactor(secrets),
            renderer if console else structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        logger_factory=lambda *args: _NamedWriteLogger(stream, args[0] if args else "ringez"),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=False,
    )
""",
    ),
    (
        "worker.logs",
        """def get_logger(name: str = "ringez") -> structlog.stdlib.BoundLogger:""",
        """def _dumps(obj: Any, **kwargs: Any) -> str:
    import orjson

    return orjson.dumps(obj, default=str).decode()


class _NamedWriteLogger(structlog.WriteLogger):
    \"\"\"A WriteLogger that knows its name, for `add_logger_name`.\"\"\"

    def __init__(self, stream: Any, name: str) -> None:
        super().__init__(stream)
        self.name = name


def get_logger(name: str = "ringez") -> structlog.stdlib.BoundLogger:""",
    ),
]

ACCEPTED_DEBUG: list[Replacement] = [
    (
        "worker.receiver",
        '    log.info("webhook.accepted", **fields)',
        '    log.debug("webhook.accepted", **fields)',
    ),
]

TIMEOUT: list[Replacement] = [
    (
        "worker.receiver",
        """        async with asyncio.timeout(settings.body_read_timeout_seconds):
            body = await request.read()
""",
        """        if request.content.is_eof():
            body = await request.read()  # all of it has arrived: nothing to wait for
        else:
            async with asyncio.timeout(settings.body_read_timeout_seconds):
                body = await request.read()
""",
    ),
]

BATCH: list[Replacement] = [
    (
        "worker.queue",
        '''_ENQUEUE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('PSETEX', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
  return 1
end
return 0
"""''',
        '''# KEYS: queue, then (dedupe, job) per delivery. ARGV: dedupe ttl, job ttl, wake channel,
# then (job, score, id) per delivery. Returns 1 (queued) or 0 (duplicate) per delivery.
_ENQUEUE = """
local out = {}
local queued = 0
for i = 1, (#KEYS - 1) / 2 do
  local a = 3 * i
  if redis.call('SET', KEYS[2 * i], '1', 'NX', 'PX', ARGV[1]) then
    redis.call('PSETEX', KEYS[2 * i + 1], ARGV[2], ARGV[a + 1])
    redis.call('ZADD', KEYS[1], ARGV[a + 2], ARGV[a + 3])
    queued = queued + 1
    out[i] = 1
  else
    out[i] = 0
  end
end
if queued > 0 then
  redis.call('PUBLISH', ARGV[3], '')
end
return out
"""''',
    ),
    (
        "worker.queue",
        """        args = (
            self._keys.dedupe(delivery_id),
            self._keys.job(delivery_id),
            self._keys.queue,
            self._dedupe_ttl,
            self._job_ttl,
            job_bytes(delivery_id, body, now),  # type: ignore[arg-type]
            str(now),
            delivery_id,
        )""",
        """        args = (
            self._keys.dedupe(delivery_id),
            self._keys.job(delivery_id),
            job_bytes(delivery_id, body, now),  # type: ignore[arg-type]
            str(now),
            delivery_id,
        )""",
    ),
    (
        "worker.queue",
        """        results = await self._pipeline(batch)
        if any(isinstance(r, NoScriptError) for r in results):
            # Redis restarted and lost its script cache; nothing ran, so run it again.
            self._sha = await self._redis.script_load(_ENQUEUE)
            results = await self._pipeline(batch)
        return results

    async def _pipeline(self, batch: list) -> list[object]:
        pipe = self._redis.pipeline(transaction=False)
        for args, _ in batch:
            pipe.evalsha(self._sha, 3, *args)
        pipe.publish(self._keys.wake, b"")
        results = await pipe.execute(raise_on_error=False)
        return results[:-1]""",
        """        try:
            return await self._pipeline(batch)
        except NoScriptError:
            # Redis restarted and lost its script cache; nothing ran, so run it again.
            self._sha = await self._redis.script_load(_ENQUEUE)
            return await self._pipeline(batch)

    async def _pipeline(self, batch: list) -> list[object]:
        keys: list[str] = [self._keys.queue]
        argv: list[object] = [self._dedupe_ttl, self._job_ttl, self._keys.wake]
        for (dedupe, job_key, job, score, delivery_id), _ in batch:
            keys += (dedupe, job_key)
            argv += (job, score, delivery_id)
        return await self._redis.evalsha(self._sha, len(keys), *keys, *argv)""",
    ),
]

# On top of `batch`: the one EVALSHA packed by hiredis (C) instead of redis-py's Python
# packer, sent on a pooled connection with the client's own retry-on-reconnect.
HIREDIS: list[Replacement] = [
    (
        "worker.queue",
        """        return await self._redis.evalsha(self._sha, len(keys), *keys, *argv)""",
        """        packed = hiredis.pack_command(("EVALSHA", self._sha, len(keys), *keys, *argv))
        pool = self._redis.connection_pool
        conn = await pool.get_connection("EVALSHA")

        async def send() -> list[object]:
            await conn.send_packed_command(packed)
            return await conn.read_response()

        async def failed(error: Exception) -> None:
            await conn.disconnect()

        try:
            return await conn.retry.call_with_retry(send, failed)
        finally:
            await pool.release(conn)""",
    ),
    ("worker.queue", "import orjson\n", "import hiredis\nimport orjson\n"),
]

# The nesting check pushes only containers, not every scalar, on its stack (same result).
DEPTH: list[Replacement] = [
    (
        "worker.envelope",
        """        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)""",
        """        children = item.values() if isinstance(item, dict) else item
        if children:
            # A scalar child sits one level deeper; only containers need visiting.
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in children if isinstance(v, dict | list))""",
    ),
]

# Up to OVERLAP group commits in flight at once: requests that arrive while one batch is
# at Redis go in the next batch at once instead of waiting for the first to come back.
OVERLAP: list[Replacement] = [
    (
        "worker.queue",
        """        self._flusher: asyncio.Task[None] | None = None
""",
        """        self._flusher: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._max_inflight = max_inflight
""",
    ),
    (
        "worker.queue",
        """        max_batch: int = 256,
    ) -> None:""",
        """        max_batch: int = 256,
        max_inflight: int = 4,
    ) -> None:""",
    ),
    (
        "worker.queue",
        """        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await self._write(batch)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(bool(result))
""",
        """        while self._pending:
            if len(self._inflight) >= self._max_inflight:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            task = asyncio.create_task(self._commit(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            await asyncio.sleep(0)

    async def _commit(self, batch: list) -> None:
        try:
            results = await self._write(batch)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(bool(result))
""",
    ),
    (
        "worker.queue",
        """        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)""",
        """        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.gather(*self._inflight, return_exceptions=True)""",
    ),
]

PATCHES: dict[str, list[Replacement]] = {
    "log-fast": LOG_FAST,
    "accepted-debug": ACCEPTED_DEBUG,
    "timeout": TIMEOUT,
    "batch": BATCH,
    "hiredis": HIREDIS,
    "depth": DEPTH,
    "overlap": OVERLAP,
}
# Modules are re-executed in import order: receiver imports names from queue and logs.
ORDER = ("worker.logs", "worker.envelope", "worker.queue", "worker.receiver")


def apply(names: list[str]) -> None:
    """Execute the patched source of every module the named patches touch, in place."""
    unknown = set(names) - set(PATCHES)
    if unknown:
        raise SystemExit(f"unknown patches: {sorted(unknown)}")
    if "worker.cli" in sys.modules:
        raise SystemExit("apply patches before worker.cli is imported")
    edits = [r for name in names for r in PATCHES[name]]
    for module_name in ORDER:
        mine = [(old, new) for mod, old, new in edits if mod == module_name]
        if not mine:
            continue
        module: ModuleType = importlib.import_module(module_name)
        path = Path(module.__file__ or "")
        source = path.read_text()
        for old, new in mine:
            if source.count(old) != 1:
                raise SystemExit(f"a patch no longer applies to {path.name}:\n{old[:300]}")
            source = source.replace(old, new)
        exec(compile(source, str(path), "exec"), module.__dict__)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patches", default="", help="comma-separated patch names")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    apply([p for p in args.patches.split(",") if p])
    from worker.cli import main as cli_main

    argv = ["serve"] + (["--port", str(args.port)] if args.port else [])
    raise SystemExit(cli_main(argv))


if __name__ == "__main__":
    main()
