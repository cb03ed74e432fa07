"""Durable enqueue of webhook deliveries as arq jobs, one Redis round trip per batch.

Concurrent requests are grouped (group commit): one Lua call writes a whole batch, and
for each delivery, atomically, claims its dedupe record and writes an arq-compatible job
(`arq:job:<id>` + a score in the queue's sorted set), then wakes the workers once. A
busy receiver pays one round trip for many events instead of arq's three per event;
up to four batches are in flight at once.

The dedupe record is a field in a hash bucketed by the body's own timestamp (10-minute
buckets, 256 shards): a redelivery is byte-identical, so it lands in the same bucket,
and a bucket expires once every timestamp in it is older than the window, when the
receiver refuses such bodies anyway. About 30 bytes per event instead of ~130 for a key
of its own (docs/memory.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import hiredis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from ringez_worker.jobs import job_bytes
from ringez_worker.keys import BUCKET_MS, Keys
from ringez_worker.lua import Arg, LuaScript
from ringez_worker.redis_conn import NotReplicated
from ringez_worker.tracing import TRACING
from ringez_worker.transcripts import redact_body
from ringez_worker.worker.activity import STATS_TTL_SECONDS

# hiredis's stub types the command as a 1-tuple (`Tuple[str | int | ...]`) and leaves the
# return untyped; it packs a command of any length into bytes.
_pack_command = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)

# One delivery in a batch: (dedupe bucket, job key, dedupe field, bucket expiry ms, job,
# score, delivery id, the delivery log's copy of the job: b"" for the job itself), the
# future its request waits on, and with tracing on its producer span's context (the
# batch's span links it).
_Item = tuple[str, str, bytes, int, bytes, int, str, bytes]
_Pending = tuple[_Item, asyncio.Future[bool], object]


# KEYS: the queue, this minute's counters, the delivery log, then (dedupe bucket, job key)
# per delivery.
# ARGV: job ttl ms, wake channel, counters ttl s, log max entries, log min id (oldest ms
# kept), then (dedupe field, bucket expiry ms, job, score, id, logged job or '') per
# delivery.
# Returns 1 (queued) or 0 (duplicate) per delivery. The console's log and counters go
# through pcall: a failure to write them (an ACL, say) must never cost a webhook its 2xx.
_ENQUEUE = LuaScript(
    """
local out = {}
local queued = 0
local n = (#KEYS - 3) / 2
for i = 1, n do
  local a = 6 + 6 * (i - 1)
  local bucket = KEYS[2 * i + 2]
  if redis.call('HSETNX', bucket, ARGV[a], '1') == 1 then
    redis.call('PEXPIREAT', bucket, ARGV[a + 1])
    redis.call('PSETEX', KEYS[2 * i + 3], ARGV[1], ARGV[a + 2])
    redis.call('ZADD', KEYS[1], ARGV[a + 3], ARGV[a + 4])
    local logged = ARGV[a + 5]
    if logged == '' then logged = ARGV[a + 2] end
    redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'k', 'r', 'j', logged)
    queued = queued + 1
    out[i] = 1
  else
    redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'k', 'u', 'd', ARGV[a + 4])
    out[i] = 0
  end
end
if queued > 0 then
  redis.pcall('HINCRBY', KEYS[2], 'accepted', queued)
  redis.call('PUBLISH', ARGV[2], '')
end
if queued < n then
  redis.pcall('HINCRBY', KEYS[2], 'duplicate', n - queued)
end
redis.pcall('EXPIRE', KEYS[2], ARGV[3])
redis.pcall('XTRIM', KEYS[3], 'MINID', '~', ARGV[5])
return out
"""
)


class EventQueue:
    """Writes deliveries to Redis; `enqueue` returns only once Redis has answered."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        dedupe_ttl_ms: int,
        job_ttl_ms: int,
        max_batch: int = 256,
        max_inflight: int = 4,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        log_max_entries: int = 20_000,
        log_retention_ms: int = 86_400_000,
        redact_transcripts: bool = False,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._dedupe_ttl = dedupe_ttl_ms
        self._job_ttl = str(job_ttl_ms)
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        # The console's delivery log and counters, written by the same script call.
        self._log_max = str(log_max_entries)
        self._log_retention_ms = log_retention_ms
        # PRIVACY_REDACT_TRANSCRIPTS: the log keeps a copy without transcript text (the
        # job keeps the body as signed: the handlers need it). Off, it costs nothing.
        self._redact = redact_transcripts
        # With replicas (Sentinel), WAIT in the same round trip: a 2xx then means the
        # event is on `wait_replicas` replicas too, so a failover cannot lose it.
        # WAIT counts this connection's own last write. A batch of duplicates writes
        # nothing, yet its "duplicate" answer vouches for a write another connection made:
        # a small write first makes WAIT cover everything before it.
        self._wait_replicas = wait_replicas
        self._wait_tail = _pack_command(("INCR", f"{keys.prefix}:wait-mark")) + _pack_command(
            ("WAIT", wait_replicas, wait_timeout_ms)
        )
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def enqueue(
        self,
        delivery_id: str,
        body: bytes,
        received_ms: int | None = None,
        event_ms: int | None = None,
    ) -> bool:
        """Queue one delivery. True: new job written. False: a duplicate inside the window.

        `event_ms` is the body's own timestamp (it places the dedupe record); raises the
        Redis error when the write cannot be confirmed.
        """
        now = received_ms if received_ms is not None else int(time.time() * 1000)
        stamp = event_ms if event_ms is not None else now
        if TRACING.on:
            return await self._enqueue_traced(delivery_id, body, now, stamp)
        return await self._submit(self._item(delivery_id, body, now, stamp), None)

    def submit(
        self, delivery_id: str, body: bytes, received_ms: int, event_ms: int
    ) -> asyncio.Future[bool]:
        """`enqueue` without the coroutine, for a caller that adds a done callback instead
        of awaiting (the socket lane: no task per request). Tracing off only: a traced
        enqueue needs its producer span around the await (`enqueue`)."""
        return self._submit(self._item(delivery_id, body, received_ms, event_ms), None)

    def _item(
        self,
        delivery_id: str,
        body: bytes,
        now: int,
        stamp: int,
        trace_context: dict[str, str] | None = None,
    ) -> _Item:
        bucket, field = self._keys.dedupe(delivery_id, stamp)
        expires_at = (stamp // BUCKET_MS + 1) * BUCKET_MS + self._dedupe_ttl
        job = job_bytes(delivery_id, body, now, trace_context=trace_context)
        logged = b""
        if self._redact:
            text = body.decode()
            redacted = redact_body(text)
            logged = b"" if redacted is text else job_bytes(delivery_id, redacted, now)
        item: _Item = (
            bucket,
            self._keys.job(delivery_id),
            field,
            expires_at,
            job,
            now,
            delivery_id,
            logged,
        )
        return item

    def _submit(self, item: _Item, span_context: object) -> asyncio.Future[bool]:
        # Not a coroutine: on the hot path, one frame fewer per event.
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, span_context))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    def kick(self) -> None:
        """Send what is pending now (one batch), if a commit slot is free."""
        if self._pending and len(self._inflight) < self._max_inflight:
            self._start_commit()

    def _start_commit(self) -> None:
        """Take the next batch off the pending list and start its commit."""
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        task = asyncio.create_task(self._commit(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _enqueue_traced(self, delivery_id: str, body: bytes, now: int, stamp: int) -> bool:
        from ringez_worker import tracing_otel

        # The delivery's PRODUCER span, made here: the batch goes out as one packed
        # command past redis-py, where its instrumentation never sees it.
        span = tracing_otel.start_producer_span(self._keys.queue, delivery_id)
        try:
            item = self._item(delivery_id, body, now, stamp, tracing_otel.traceparent(span))
            new = await self._submit(item, span.get_span_context())
            span.set_attribute("ringez.duplicate", not new)
            return new
        except BaseException as exc:
            tracing_otel.fail_span(span, type(exc).__name__)
            raise
        finally:
            span.end()

    async def _flush(self) -> None:
        # Let every request that is already runnable join the first batch.
        await asyncio.sleep(0)
        while self._pending:
            if len(self._inflight) >= self._max_inflight:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            self._start_commit()
            await asyncio.sleep(0)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            if TRACING.on:
                results = await self._write_traced(batch)
            else:
                results = await self._write(batch)
        except Exception as exc:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(bool(result))

    async def _write_traced(self, batch: list[_Pending]) -> list[object]:
        from ringez_worker import tracing_otel

        created = [c for _, _, c in batch if c is not None]
        with tracing_otel.batch_span(self._keys.queue, created):  # type: ignore[arg-type]  # SpanContexts
            try:
                return await self._write(batch)
            except Exception as exc:
                tracing_otel.fail(type(exc).__name__)
                raise

    async def _write(self, batch: list[_Pending]) -> list[object]:
        try:
            return await self._evalsha(batch)
        except NoScriptError:
            # A new Redis, or one restarted without its script cache: nothing ran, so
            # send the script once and run the batch again.
            await _ENQUEUE.load(self._redis)
            return await self._evalsha(batch)

    async def _evalsha(self, batch: list[_Pending]) -> list[object]:
        now = time.time()
        keys: list[Arg] = [
            self._keys.queue,
            self._keys.stats(int(now // 60)),
            self._keys.deliveries,
        ]
        argv: list[Arg] = [
            self._job_ttl,
            self._keys.wake,
            STATS_TTL_SECONDS,
            self._log_max,
            int(now * 1000) - self._log_retention_ms,
        ]
        for (bucket, job_key, field, expires_at, job, score, delivery_id, logged), _, _ in batch:
            keys += (bucket, job_key)
            argv += (field, expires_at, job, score, delivery_id, logged)
        # Packed by hiredis (C): redis-py's Python packer costs microseconds per argument,
        # and a batch carries seven per event. Sent with the client's retry-on-reconnect.
        packed = _pack_command(_ENQUEUE.command(keys, argv))
        if self._wait_replicas:
            packed += self._wait_tail
        pool = self._redis.connection_pool
        conn = await pool.get_connection()

        async def send() -> list[object]:
            await conn.send_packed_command(packed)
            if not self._wait_replicas:
                return await conn.read_response()
            # Read all three replies before raising any error in them, or the next user
            # of this connection would read the rest as theirs.
            replies: list[object] = []
            for _ in range(3):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise reply
            results, _, acked = replies  # EVALSHA's array, INCR's and WAIT's integers
            if cast(int, acked) < self._wait_replicas:
                raise NotReplicated(
                    f"{acked} of {self._wait_replicas} replicas confirmed the write"
                )
            return cast(list[object], results)

        async def on_error(error: Exception) -> None:
            await conn.disconnect()

        try:
            return await conn.retry.call_with_retry(send, on_error)
        finally:
            await pool.release(conn)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.gather(*self._inflight, return_exceptions=True)
