"""RingezWorker: arq's Worker, claiming due jobs in batches and woken by pub/sub.

Same keys and semantics as arq (a job is claimed by setting its in-progress key only if
absent), but one Lua call claims a whole batch, short leases are renewed per worker and
batch, heartbeats and presence run beside the poll loop, and a Redis that answers but
refuses (full, read-only) is waited out instead of crashing the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from typing import Any

import orjson
from arq import Worker
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ringez_worker.backoff import backoff_seconds
from ringez_worker.jobs import Job
from ringez_worker.logs import get_logger
from ringez_worker.lua import LuaScript

log = get_logger("ringez.worker")

# Longest wait between tries while Redis refuses the claim (full, read-only): short, so
# the backlog drains within seconds of memory being freed.
_REFUSED_BACKOFF_CAP_S = 5.0

# KEYS: the queue, the in-progress key prefix. ARGV: now ms, lease ms, how many to claim,
# how many due entries to look at at most. Running jobs stay in the queue's sorted set
# (arq removes a job when it ends), so the oldest due entries are often jobs already
# claimed, by this worker or others: skip them and look further, in pages.
_CLAIM = LuaScript(
    """
local want = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local claimed = {}
local n, offset = 0, 0
while n < want and offset < limit do
  local page = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
    'LIMIT', offset, want)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local key = KEYS[2] .. page[i]
    if redis.call('EXISTS', key) == 0 then
      redis.call('PSETEX', key, ARGV[2], '1')
      claimed[#claimed + 1] = page[i]
      claimed[#claimed + 1] = page[i + 1]
      n = n + 1
      if n == want then break end
    end
  end
  offset = offset + #page / 2
end
return claimed
"""
)


class RingezWorker(Worker):
    """An arq Worker that claims jobs in batches and wakes on the receiver's notice.

    arq claims each job with four sequential round trips and then sleeps `poll_delay`;
    here one Lua script claims a whole batch (same keys, same semantics: the
    in-progress key is set only if absent and the job is due), and a pub/sub message
    from the receiver, or a finished job freeing a slot, ends the wait at once.
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
        # arq's loop sleeps poll_delay between iterations; the wait happens in _poll_iteration.
        self.poll_delay_s = 0

    async def _poll_iteration(self) -> None:
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
        args = [timestamp_ms(), self._lease_ms, free, free + self._claim_scan]
        keys = [self.queue_name, in_progress_key_prefix]
        claimed = await _CLAIM(self.pool, keys, args)
        for i in range(0, len(claimed), 2):
            job_id = claimed[i].decode() if isinstance(claimed[i], bytes) else claimed[i]
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(float(claimed[i + 1]))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
        return len(claimed) // 2

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
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            if not running:
                continue
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for job_id in running:
                        # PEXPIRE, not SET: a key arq already deleted must stay deleted.
                        pipe.pexpire(in_progress_key_prefix + job_id, self._lease_ms)
                    await pipe.execute()
            except Exception as exc:
                log.warning("worker.lease_renewal_failed", error=type(exc).__name__)

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
