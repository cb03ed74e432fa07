"""RingezWorker: arq's Worker, claiming due jobs in batches and woken by pub/sub.

arq's keys and job records (`arq:job:<id>`, the queue's sorted set, `arq:retry:<id>`),
so the receiver, `ringez_worker.jobs` and arq's own client queue for it unchanged. The
hot path is its own: one Lua call claims a batch (and reads the job records and counts
the tries arq's run_job would), a claimed job's lease is its queue score (moved to the
lease's deadline, renewed per worker in one call), and jobs that end together are ended
in one call that also writes their last completion records and delivery-log entries.
A job stays in the queue until it ends, as in arq. Heartbeats and presence run beside
the poll loop, and a Redis that answers but refuses (full, read-only) is waited out
instead of crashing the process.

Mixed with plain arq or an older worker on one queue (a rolling upgrade): a due job with
an arq in-progress key is theirs and is skipped; the jobs this worker runs are not due
while their lease holds, so they skip those.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from typing import Any

import orjson
from arq import Retry, Worker
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import SerializationError, deserialize_job_raw
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import RetryJob
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ringez_worker.backoff import backoff_seconds, write_within
from ringez_worker.jobs import Job
from ringez_worker.keys import Keys
from ringez_worker.logs import get_logger
from ringez_worker.lua import Arg, LuaScript
from ringez_worker.worker import activity
from ringez_worker.worker.completions import COMPLETIONS, Completions

log = get_logger("ringez.worker")

# Longest wait between tries while Redis refuses the claim (full, read-only): short, so
# the backlog drains within seconds of memory being freed.
_REFUSED_BACKOFF_CAP_S = 5.0

# KEYS: the queue. ARGV: now ms, the lease's deadline (ms), how many to claim, how many
# due entries to look at at most, the job / in-progress / try-counter key prefixes, the
# try counter's TTL (s).
#
# A claimed job stays in the queue's sorted set (at-least-once, as in arq) with its score
# moved to the lease's deadline: it is not due while the lease holds, and due again for
# any worker once it runs out (a SIGKILLed worker's jobs move on after one lease). So a
# claim reads only waiting jobs and never steps over running ones. A due job with an
# arq in-progress key is one a plain-arq or older worker is running: skipped, as arq
# does. The job records and in-progress keys of a page come in one MGET, the new scores
# in one ZADD. arq's try counter (`arq:retry:<id>`) counts the run as arq's run_job would;
# on a first run it is created with its TTL by one SET NX.
#
# Returns [id, original score, job record (nil if it expired), try] per claimed job.
_CLAIM = LuaScript(
    """
local want = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local jp, ip, rp, ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local out, moved = {}, {}
local n, offset = 0, 0
while n < want and offset < limit do
  local page = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
    'LIMIT', offset, want - n)
  if #page == 0 then break end
  local names = {}
  for i = 1, #page, 2 do
    names[#names + 1] = jp .. page[i]
    names[#names + 1] = ip .. page[i]
  end
  local values = redis.call('MGET', unpack(names))
  for i = 1, #page, 2 do
    if not values[i + 1] then
      local id = page[i]
      local try = 1
      if not redis.call('SET', rp .. id, '1', 'NX', 'EX', ttl) then
        try = redis.call('INCR', rp .. id)
        redis.call('EXPIRE', rp .. id, ttl)
      end
      out[#out + 1] = id
      out[#out + 1] = page[i + 1]
      out[#out + 1] = values[i]
      out[#out + 1] = try
      moved[#moved + 1] = ARGV[2]
      moved[#moved + 1] = id
      n = n + 1
    end
  end
  offset = offset + #page / 2
end
if #moved > 0 then redis.call('ZADD', KEYS[1], unpack(moved)) end
return out
"""
)

# KEYS: the queue. ARGV: the new deadline, then (job id, the deadline it holds) pairs.
# Only a job still at this worker's own deadline is moved: one that was finished,
# re-queued for a retry or claimed by another worker after its lease ran out keeps its
# score. `allow-oom` (Redis 7): a full Redis under noeviction refuses ZADD but must not
# let running jobs' leases lapse (moving a score takes no memory); PEXPIRE on arq's
# in-progress key, the lease before, was never refused either. Redis < 7 and fakeredis
# do not know the flag: `_RENEW_PLAIN` there.
_RENEW_BODY = """
local renewed = 0
for i = 2, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
"""
_RENEW = LuaScript("#!lua flags=allow-oom\n" + _RENEW_BODY)
_RENEW_PLAIN = LuaScript(_RENEW_BODY)

# The end of a batch of jobs, in one call. KEYS: the queue. ARGV: the job / try counter /
# in-progress key prefixes, the delivery log, its approximate cap, this minute's stats
# key, its TTL, then per job: id, 'f' (finished: remove it) or 'r' (re-queue at the
# score), the score, the completion records' TTL, how many runs, and per run: the
# completion record's key, delivery id, handler, at ms, try, duration ms, API calls JSON
# (or ''). Each run is written (completion record, delivery log entry) before its job is
# removed or re-queued, in the same atomic step.
_FINISH = LuaScript(
    """
local jp, rp, ip = ARGV[1], ARGV[2], ARGV[3]
local logkey, cap, stats, stats_ttl = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local i = 8
local gone, keys, handled = {}, {}, 0
while i <= #ARGV do
  local id, action, score, ttl, runs = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    tonumber(ARGV[i + 4])
  i = i + 5
  for _ = 1, runs do
    local done, d, h, at, t, ms, api = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
      ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
    i = i + 7
    redis.call('HSET', done, h, at)
    redis.call('EXPIRE', done, ttl)
    if api == '' then
      redis.call('XADD', logkey, 'MAXLEN', '~', cap, '*', 'k', 'h', 'd', d, 'h', h,
        'o', 'ok', 't', t, 'ms', ms)
    else
      redis.call('XADD', logkey, 'MAXLEN', '~', cap, '*', 'k', 'h', 'd', d, 'h', h,
        'o', 'ok', 't', t, 'ms', ms, 'a', api)
    end
    handled = handled + 1
  end
  if action == 'f' then
    gone[#gone + 1] = id
    keys[#keys + 1] = jp .. id
    keys[#keys + 1] = rp .. id
    keys[#keys + 1] = ip .. id
  else
    redis.call('ZADD', KEYS[1], score, id)
  end
end
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('DEL', unpack(keys))
end
if handled > 0 then
  redis.call('HINCRBY', stats, 'handled', handled)
  redis.call('EXPIRE', stats, stats_ttl)
end
return handled
"""
)

# arq's own TTL for its try counter (worker.py: `pipe.expire(retry_key, 88400)`).
_TRIES_TTL_S = 88400
# Jobs ended in one finishing call at most.
_FINISH_BATCH = 200


class RingezWorker(Worker):
    """An arq Worker that claims jobs in batches and wakes on the receiver's notice.

    arq claims each job with four sequential round trips, starts and ends it with a
    transaction each, and then sleeps `poll_delay`; here one Lua script claims a whole
    batch, another ends every job that finished meanwhile (`_Finisher`), and a pub/sub
    message from the receiver, or a finished job freeing a slot, ends the wait at once.
    """

    def __init__(
        self,
        *args: Any,
        wake_channel: str,
        presence_key: str,
        idle_poll: float = 0.5,
        lease: float = 15.0,
        presence_ttl: float = 20.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._presence_key = presence_key
        self._presence_ttl_ms = int(presence_ttl * 1000)
        self._lease_ms = int(lease * 1000)
        self._lease_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._wake_channel = wake_channel
        self._idle_poll = max(idle_poll, 0.01)
        self._refill = max(1, self.max_jobs // 4)
        self._listener: asyncio.Task[None] | None = None
        # How many already-claimed jobs a claim may step over: all workers' running jobs
        # sit at the head of the queue (ten workers like this one).
        self._claim_scan = max(1000, 10 * self.max_jobs)
        self._refusals = 0
        # Each running job's lease: the deadline its queue score holds (see _CLAIM).
        self._leases: dict[str, int] = {}
        self._finisher = _Finisher(self)
        self._renew = _RENEW
        self._frozen = False
        # arq's loop sleeps poll_delay between iterations; the wait happens in _poll_iteration.
        self.poll_delay_s = 0

    async def _poll_iteration(self) -> None:
        if not self._frozen:
            # Start-up done (imports, settings, router, pools): what is alive now lives
            # for the process. Out of the collector's generations, every full collection
            # no longer walks it: +12-18 % jobs/s measured on the drain.
            self._frozen = True
            gc.collect()
            gc.freeze()
        self._ensure_tasks()
        self._wake.clear()
        free = self.max_jobs - self.job_counter
        backlog = False
        try:
            if self.allow_pick_jobs and free > 0:
                # Every slot filled: more may be queued. Fewer: nothing else is due.
                backlog = await self._claim_and_start(free) == free
        except (RedisConnectionError, RedisTimeoutError):
            raise  # Redis is gone: arq exits and `ringez-worker worker` restarts it
        except RedisError as exc:
            # Redis answers but refuses (a full Redis under noeviction, READONLY after a
            # failover): wait here and try again, rather than exit and crash-loop.
            await self._back_off(exc)
            return
        self._refusals = 0
        self._reap()
        if backlog:
            # More is queued than we could take: poll again once a batch of slots is free.
            while self.max_jobs - self.job_counter < self._refill and self.allow_pick_jobs:
                await self._wait_for_wake()
                self._wake.clear()
        else:
            await self._wait_for_wake()

    def _ensure_tasks(self) -> None:
        # Heartbeat, lease renewal and the wake listener run beside the poll loop, so a
        # worker with every slot busy still reports itself alive and keeps its leases.
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())
        if self._lease_task is None or self._lease_task.done():
            self._lease_task = asyncio.create_task(self._renew_leases())
        if self._beat_task is None or self._beat_task.done():
            self._beat_task = asyncio.create_task(self._beat())

    def _reap(self) -> None:
        for job_id, task in list(self.tasks.items()):
            if not task.done():
                continue
            del self.tasks[job_id]
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, (RedisError, OSError)):
                # arq's own bookkeeping for the job failed (a refused write, a lost
                # connection): the job stays queued and claimed, so once its lease runs out
                # it runs again; the worker itself carries on.
                log.warning(
                    "worker.job_bookkeeping_failed", job_id=job_id, error=type(exc).__name__
                )
                continue
            task.result()  # surfaces other errors in run_job, as arq does

    async def _back_off(self, exc: RedisError) -> None:
        self._refusals += 1
        delay = backoff_seconds(self._refusals, self._idle_poll, _REFUSED_BACKOFF_CAP_S)
        log.warning(
            "worker.redis_refused",
            error=type(exc).__name__,
            attempt=self._refusals,
            retry_in_s=round(delay, 3),
        )
        self._reap()
        await asyncio.sleep(delay)

    async def _wait_for_wake(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the wake fires, and the worker would then never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._idle_poll):
                await self._wake.wait()

    async def _claim_and_start(self, free: int) -> int:
        """Claim up to `free` due, unclaimed jobs in one call and start them; how many."""
        # A short lease, renewed while the job runs, instead of arq's job_timeout + 10 s:
        # a killed worker's jobs are picked up by others after one lease, not minutes.
        now = timestamp_ms()
        deadline = now + self._lease_ms
        args: list[Arg] = [
            now,
            deadline,
            free,
            free + self._claim_scan,
            job_key_prefix,
            in_progress_key_prefix,
            retry_key_prefix,
            _TRIES_TTL_S,
        ]
        claimed = await _CLAIM(self.pool, [self.queue_name], args)
        for i in range(0, len(claimed), 4):
            raw_id = claimed[i]
            job_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            await self.sem.acquire()
            self.job_counter += 1
            self._leases[job_id] = deadline
            coro = self._run_claimed(
                job_id, int(float(claimed[i + 1])), claimed[i + 2], int(claimed[i + 3])
            )
            task = self.loop.create_task(coro)
            task.add_done_callback(self._job_done)
            self.tasks[job_id] = task
        return len(claimed) // 4

    def _job_done(self, _: object) -> None:
        self._release_sem_dec_counter_on_complete()

    async def _run_claimed(self, job_id: str, score: int, raw: bytes | None, job_try: int) -> None:
        """arq's `run_job` for a job the claim already read and counted; its end goes
        to the finisher (one call for every job ending together) instead of arq's
        `finish_job` transaction."""
        try:
            if raw is None:
                log.warning("worker.job_expired", job_id=job_id)
                self.jobs_failed += 1
                await asyncio.shield(self.finish_failed_job(job_id, None))
                return
            try:
                function_name, args, kwargs, enqueue_try, enqueue_ms = deserialize_job_raw(
                    raw, deserializer=self.job_deserializer
                )
                function = self.functions[function_name]
            except (SerializationError, KeyError) as exc:
                log.error("worker.job_unreadable", job_id=job_id, error=type(exc).__name__)
                self.jobs_failed += 1
                await asyncio.shield(self.finish_failed_job(job_id, None))
                return
            if enqueue_try and enqueue_try > job_try:
                job_try = enqueue_try
                await self.pool.setex(retry_key_prefix + job_id, _TRIES_TTL_S, str(job_try))
            max_tries = self.max_tries if function.max_tries is None else function.max_tries
            if job_try > max_tries:
                log.warning("worker.max_tries_exceeded", job_id=job_id, tries=max_tries)
                self.jobs_failed += 1
                await asyncio.shield(self.finish_failed_job(job_id, None))
                return
            ctx = {
                **self.ctx,
                "job_id": job_id,
                "job_try": job_try,
                "enqueue_time": ms_to_datetime(enqueue_ms),
                "score": score,
            }
            if self.on_job_start:
                await self.on_job_start(ctx)
            timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
            sink = Completions()
            COMPLETIONS.set(sink)  # this task's own context
            action, new_score = "f", 0
            try:
                async with asyncio.timeout(timeout_s):
                    await function.coroutine(ctx, *args, **kwargs)
            except Retry as exc:
                # arq: re-queued `defer` after now (its ZINCRBY by defer + now - score).
                action, new_score = "r", timestamp_ms() + (exc.defer_score or 0)
                self.jobs_retried += 1
            except (asyncio.CancelledError, RetryJob):
                # Shutdown: due again at once for another worker, as arq does.
                action, new_score = "r", timestamp_ms()
                self.jobs_retried += 1
            except Exception as exc:
                # arq drops a job whose function raised (the dispatcher never lets a
                # handler's error out; this is a bug or arq's own backstop timeout).
                log.error("worker.job_failed", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
                self.jobs_failed += 1
            else:
                self.jobs_complete += 1
            if self.on_job_end:
                await self.on_job_end(ctx)
            await asyncio.shield(self._finisher.end(job_id, action, new_score, sink))
            if self.after_job_end:
                await self.after_job_end(ctx)
        finally:
            self._leases.pop(job_id, None)

    def handle_sig_wait_for_completion(self, signum: Any) -> None:
        # arq stops taking jobs and waits up to job_completion_wait for running ones.
        log.info("worker.stopping", signal=signal.Signals(signum).name, running=self.job_counter)
        super().handle_sig_wait_for_completion(signum)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        # arq drops a job it gave up on (tries exhausted by crashes or timeouts, expiry);
        # keep it in the failed-events record so it can be replayed.
        try:
            raw = await self.pool.get(job_key_prefix + job_id)
            dispatcher = self.ctx.get("dispatcher")
            if raw and dispatcher is not None:
                job = Job.from_record(raw)
                tries = int(await self.pool.get(retry_key_prefix + job_id) or 0)
                await dispatcher.abandon(
                    job.id,
                    job.body,
                    "worker gave up: crashed or timed out on every try",
                    tries,
                    job.kind,
                    job.trace_link or job.trace_context,
                )
        except (RedisError, OSError) as exc:
            # Keep the job (its lease runs out and it is tried again) rather than drop it
            # with no record: the delete below would go through even on a full Redis.
            log.error("worker.abandon_record_failed", job_id=job_id, error=type(exc).__name__)
            return
        except Exception as exc:
            log.error("worker.abandon_record_failed", job_id=job_id, error=type(exc).__name__)
        await super().finish_failed_job(job_id, result_data)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            if not self._leases:
                continue
            leases = list(self._leases.items())
            deadline = timestamp_ms() + self._lease_ms
            args: list[Arg] = [deadline]
            for job_id, held in leases:
                args += (job_id, held)
            try:
                try:
                    await self._renew(self.pool, [self.queue_name], args)
                except ResponseError as exc:
                    # A full or read-only Redis raises a subclass; a script it cannot
                    # load (the flag), ResponseError itself.
                    if self._renew is _RENEW_PLAIN or type(exc) is not ResponseError:
                        raise
                    self._renew = _RENEW_PLAIN  # a server without script flags
                    await self._renew(self.pool, [self.queue_name], args)
            except Exception as exc:
                log.warning("worker.lease_renewal_failed", error=type(exc).__name__)
                continue
            for job_id, _ in leases:
                if job_id in self._leases:
                    self._leases[job_id] = deadline

    async def _beat(self) -> None:
        # Every quarter of the presence TTL: a missed beat or two never lets presence lapse.
        while True:
            try:
                await self.heart_beat()
                await self._presence()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a refused or lost write; the next beat tries again
                log.debug("worker.heartbeat_failed", error=type(exc).__name__)
            await asyncio.sleep(self._presence_ttl_ms / 4000)

    async def _presence(self) -> None:
        # `ringez-worker status` counts workers by these keys; they expire with the worker.
        stats = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "running": self.job_counter,
            "complete": self.jobs_complete,
            "failed": self.jobs_failed,
            "retried": self.jobs_retried,
            "at_ms": int(time.time() * 1000),
            "every_ms": self._presence_ttl_ms // 4,
        }
        await self.pool.set(self._presence_key, orjson.dumps(stats), px=self._presence_ttl_ms)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake.set()

    async def _listen(self) -> None:
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(self._wake_channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Polling keeps jobs moving while the subscription is down.
                log.debug("worker.wake_listener_lost", error=type(exc).__name__)
                self._wake.set()
                await asyncio.sleep(1)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._pool is not None:
                await self.pool.delete(self._presence_key)
        for task in (self._listener, self._lease_task, self._beat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        # arq's close gathers the job tasks and stops at the first one that raised.
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        await self._finisher.close()
        try:
            await super().close()
        except (RedisError, OSError):
            # Redis is gone: arq's close stopped at deleting its health key, before
            # on_shutdown and the pool; finish both so a restart leaks nothing.
            with contextlib.suppress(Exception):
                if self.on_shutdown:
                    await self.on_shutdown(self.ctx)
            with contextlib.suppress(Exception):
                await self.pool.aclose(close_connection_pool=True)
            self._pool = None


class _Finisher:
    """Ends jobs in batches: one `_FINISH` call for every job that ended while the
    previous call was on its way (a group commit, no timer), up to `_FINISH_BATCH`.

    `end` returns once the job's end is written, so the job's task (and its lease,
    renewed while the task runs) lasts until then. A refused write is tried again for up
    to half a lease; if it still fails, the job's task raises it (`_reap` logs it), and
    the job, still queued under its lease, runs again once the lease runs out, with its
    completion record unwritten: at least once, never lost.
    """

    def __init__(self, worker: RingezWorker) -> None:
        self._worker = worker
        self._pending: list[tuple[list[Arg], int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = False

    def end(self, job_id: str, action: str, score: int, sink: Completions) -> asyncio.Future[None]:
        settings = self._settings()
        ttl = settings.handler_state_ttl_seconds if sink.keep else settings.done_record_ttl_seconds
        entry: list[Arg] = [job_id, action, score, ttl, len(sink.runs)]
        for run in sink.runs:
            entry += (
                run.done_key,
                run.delivery_id,
                run.handler,
                run.at_ms,
                run.job_try,
                round(run.duration_ms, 1),
                run.api_calls,
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, len(sink.runs), future))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return future

    def _settings(self) -> Any:
        dispatcher = self._worker.ctx.get("dispatcher")
        if dispatcher is not None:
            return dispatcher.settings
        from ringez_worker.settings import Settings

        return Settings.model_construct()

    def _keys(self) -> Keys:
        dispatcher = self._worker.ctx.get("dispatcher")
        return dispatcher.keys if dispatcher is not None else Keys()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:_FINISH_BATCH]
                del self._pending[:_FINISH_BATCH]
                self._busy = True
                try:
                    await self._write(batch)
                except BaseException as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                else:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_result(None)
                finally:
                    self._busy = False

    async def _write(self, batch: list[tuple[list[Arg], int, asyncio.Future[None]]]) -> None:
        settings = self._settings()
        keys = self._keys()
        args: list[Arg] = [
            job_key_prefix,
            retry_key_prefix,
            in_progress_key_prefix,
            keys.deliveries,
            settings.delivery_log_max_entries,
            keys.stats(activity.minute()),
            activity.STATS_TTL_SECONDS,
        ]
        for entry, _, _ in batch:
            args += entry
        # The side effects have happened: a short refusal is waited out, up to half a
        # lease, rather than running them again.
        pool, queue = self._worker.pool, self._worker.queue_name
        await write_within(settings.job_lease_seconds / 2, lambda: _FINISH(pool, [queue], args))

    async def close(self, wait_s: float = 5.0) -> None:
        # Jobs whose task was cancelled while their end was on its way: write it first
        # (else they wait out their lease), within a bound.
        deadline = time.monotonic() + wait_s
        while (self._pending or self._busy) and time.monotonic() < deadline:
            if self._task is None or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
