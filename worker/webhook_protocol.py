"""Webhook POSTs served straight off the socket; every other request handed to aiohttp.

aiohttp's per-request machinery (a Request and its StreamReader, a Response, the router,
a task step per await) cost more than everything the receiver does itself: ~150 against
~65 us of receiver CPU per webhook on the 2-core bench box, and half the req/s
(bench/README.md, 2026-12-03). This protocol parses each connection with httptools
(llhttp, the parser uvicorn uses), runs every `POST <WEBHOOK_PATH>` through the same
`Intake` as the aiohttp handler (the same checks, enqueue, answers, lines and metrics),
with a callback on the group commit's future instead of a task, and writes the answers
itself, in request order.

Anything else (another path or method, an Upgrade) is aiohttp's: the connection is handed
to aiohttp's own protocol at that request's first byte, once every earlier answer is
written, and stays there. One request cannot be handed over exactly: one pipelined behind
a webhook in the same read, whose first byte's offset httptools does not tell; the
connection is then closed after the earlier answers, which RFC 9112 9.3.2 allows, and the
client sends it again on a new connection (proxies do not pipeline to their upstreams).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httptools

from ringez_worker.worker import sansio
from ringez_worker.worker.receiver import Answer, Intake, error_answer

# Bytes of request line and headers before they must be complete: llhttp streams them,
# but httptools gathers a header's name and value in memory whatever their length.
MAX_HEAD_BYTES = 32 * 1024
# Answers owed on one connection before it stops reading (a pipelining flood).
MAX_OWED = 32
# Webhooks checked and handed to the group commit per loop turn. Checked all at once, a
# burst from 64 connections went to Redis as one batch and the receiver sat idle while
# Redis ran it (lock-step: 73 % of a core). In turns of 16, the first part is in Redis
# while the next is checked: 10.1k against 9.4k req/s (medians of 3, bench/README.md).
TURN = 16
# aiohttp's keep-alive timeout: an idle connection is closed after this.
KEEPALIVE_SECONDS = 75.0

_REASONS = {
    200: b"OK",
    202: b"Accepted",
    400: b"Bad Request",
    401: b"Unauthorized",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Entity",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _NotMine(Exception):
    """Raised from a parser callback: this request is aiohttp's."""


class _Stop(Exception):
    """Raised from a parser callback: answered and closing; parse nothing more."""


class WebhookLane:
    """What every connection of one listening socket shares: the intake, the webhook path,
    aiohttp's protocol factory for the rest, the open connections and a coarse clock."""

    def __init__(
        self,
        intake: Intake,
        webhook_path: str,
        aiohttp_protocol: Callable[[], asyncio.Protocol],
        body_timeout_seconds: float,
    ) -> None:
        self.intake = intake
        self.path = webhook_path.encode()
        self.aiohttp_protocol = aiohttp_protocol
        self.body_timeout = body_timeout_seconds
        self.connections: set[WebhookProtocol] = set()
        # Read per request instead of the clock: the sweep moves it once a second.
        self.now = time.monotonic()
        self._date = b""
        self._date_at = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None  # made by shutdown
        self._todo: list[Any] = []
        self._scheduled = False

    def __call__(self) -> WebhookProtocol:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return WebhookProtocol(self)

    def encode(self, answer: Answer, keep_alive: bool, http10: bool) -> bytes:
        """The answer as HTTP/1.1 bytes."""
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = formatdate(now, usegmt=True).encode()
        extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in answer.headers)
        if not keep_alive:
            extra += b"Connection: close\r\n"
        elif http10:
            extra += b"Connection: keep-alive\r\n"
        return (
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Date: %s\r\n%s\r\n%s"
        ) % (
            answer.status,
            _REASONS.get(answer.status, b"Unknown"),
            len(answer.body),
            self._date,
            extra,
            answer.body,
        )

    async def _sweep(self) -> None:
        # Timeouts by one pass a second over the connections, not a timer per request.
        while True:
            await asyncio.sleep(1.0)
            self.now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(self.now)

    def later(self, *request: Any) -> None:
        """Queue a complete webhook for `WebhookProtocol.process` in the lane's next turn."""
        self._todo.append(request)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        todo = self._todo
        n = min(len(todo), TURN)
        for i in range(n):
            conn, *rest = todo[i]
            conn.process(*rest)
        del todo[:n]
        queue = self.intake.queue
        if queue is not None:
            queue.kick()  # this turn's batch goes out before the next turn is checked
        if todo:
            asyncio.get_running_loop().call_soon(self._drain)
        else:
            self._scheduled = False

    def forget(self, conn: WebhookProtocol) -> None:
        """A connection closed or went to aiohttp."""
        self.connections.discard(conn)
        if not self.connections and self._drained is not None:
            self._drained.set()

    async def shutdown(self, grace: float) -> None:
        """Stop reading new requests, let owed answers go out (within `grace` s), close."""
        self._drained = asyncio.Event()
        for conn in list(self.connections):
            conn.finish()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()


class WebhookProtocol(asyncio.Protocol):
    """One connection: webhook POSTs answered here, in order; the rest handed to aiohttp."""

    def __init__(self, lane: WebhookLane) -> None:
        self._lane = lane
        self._intake = lane.intake
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._last = lane.now
        # Answers: slot numbers in request order; done ones wait in `_ready` for their turn.
        self._next_slot = 0
        self._next_write = 0
        self._ready: dict[int, tuple[bytes, bool]] = {}
        self._closing = False  # no more requests: close once every owed answer is out
        self._handoff: list[bytes] | None = None  # aiohttp's bytes, once answers are out
        self._pauses: set[str] = set()
        # Where the current request began: this read (no other request ended in it
        # before) or unknown; and the reads since, until its headers are complete.
        self._chunk = b""
        self._ended_in_chunk = False
        self._begin: bytes | None = None
        self._later: list[bytes] | None = None
        self._in_message = False
        self._headers_done = False
        self._head_bytes = 0
        self._reads = 0
        self._began_in = 0
        self._begun_at = 0.0
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._sig: str | None = None
        self._ctype: str | None = None
        self._clen: str | None = None
        self._expect = False
        self._body: bytes | bytearray = b""
        self._size = 0
        self._early: sansio.Rejected | None = None
        self._sent = ""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._lane.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._lane.forget(self)

    def eof_received(self) -> bool:
        # The client sent everything: answer what it asked, then close.
        self.finish()
        return True

    def pause_writing(self) -> None:
        self._pause("writing")  # the client is not reading its answers: stop taking requests

    def resume_writing(self) -> None:
        self._resume("writing")

    def data_received(self, data: bytes) -> None:
        if self._handoff is not None:
            self._handoff.append(data)  # read before the pause took effect: aiohttp's
            return
        if self._closing:
            return
        self._last = self._lane.now
        self._reads += 1
        self._chunk = data
        self._ended_in_chunk = False
        if self._in_message and not self._headers_done and self._begin is not None:
            if self._later is None:
                self._later = [data]
            else:
                self._later.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback's exception comes back wrapped (HttpParserCallbackError).
            cause = exc.__context__
            if isinstance(cause, _NotMine):
                self._divert()
            elif isinstance(cause, _Stop) or self._closing:
                pass
            elif isinstance(exc, httptools.HttpParserCallbackError):
                # Our own code failed on this request: never a 2xx, and say so in the log.
                self._intake.log.error("webhook.failed", error=type(cause).__name__)
                self._answer_now(
                    sansio.Rejected(500, "internal_error", "the receiver failed; retry later")
                )
            else:
                self._answer_now(
                    sansio.Rejected(400, "bad_request", "the request is not valid HTTP/1.1")
                )
            return
        if (
            self._in_message
            and not self._headers_done
            and (self._began_in != self._reads or self._begin is not None)
        ):
            # All of this read is head: the request began before it or at its first byte
            # (one begun mid-read, behind another, is bounded by the read's size).
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._answer_now(
                    sansio.Rejected(431, "headers_too_large", "request line and headers too long")
                )

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_message = True
        self._headers_done = False
        self._head_bytes = 0
        self._began_in = self._reads
        self._begun_at = self._lane.now
        self._begin = None if self._ended_in_chunk else self._chunk
        self._later = None
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key == b"x-ringez-signature":
            if self._sig is None:
                self._sig = value.decode("latin-1")
        elif key == b"content-type":
            if self._ctype is None:
                self._ctype = value.decode("latin-1")
        elif key == b"content-length":
            self._clen = value.decode("latin-1")
        elif key == b"expect":
            self._expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._headers_done = True
        parser = self._parser
        if (
            parser.get_method() != b"POST"
            or self._url.partition(b"?")[0] != self._lane.path
            or parser.should_upgrade()
        ):
            raise _NotMine
        try:
            self._sent = sansio.check_header_values(
                self._sig, self._ctype, self._clen, self._intake.limits
            )
        except sansio.Rejected as exc:
            if exc.status == 413:  # declared too large: answer without reading it
                self._answer_now(exc)
                raise _Stop from None
            self._early = exc  # answered once the body is read (and dropped)
            return
        if self._expect and self._next_write == self._next_slot and self._transport:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._intake.limits.max_body_bytes:
            self._answer_now(sansio.too_large(self._intake.limits))
            raise _Stop
        if self._early is not None:
            return
        if not self._body:
            self._body = body
        else:
            if isinstance(self._body, bytes):
                self._body = bytearray(self._body)
            self._body += body

    def on_message_complete(self) -> None:
        self._in_message = False
        self._ended_in_chunk = True
        keep_alive = self._parser.should_keep_alive()
        http10 = self._parser.get_http_version() == "1.0"
        slot = self._next_slot
        self._next_slot += 1
        if not keep_alive:
            self.finish()
        if self._next_slot - self._next_write > MAX_OWED:
            self._pause("owed")
        intake = self._intake
        if self._early is not None:
            self._put(slot, intake.reject(self._early), keep_alive, http10)
            return
        body = self._body if isinstance(self._body, bytes) else bytes(self._body)
        self._lane.later(self, slot, body, self._sent, keep_alive, http10)

    def process(self, slot: int, body: bytes, sent: str, keep_alive: bool, http10: bool) -> None:
        """Check a complete webhook and hand it to the group commit (called by the lane)."""
        intake = self._intake
        try:
            delivery = intake.check(sent, body)
        except sansio.Rejected as exc:
            self._put(slot, intake.reject(exc), keep_alive, http10)
            return
        intake.metrics.in_flight += 1
        done = intake.submit(delivery, body)
        done.add_done_callback(
            functools.partial(
                self._enqueued, slot, delivery, time.perf_counter(), keep_alive, http10
            )
        )

    # answers

    def _enqueued(
        self,
        slot: int,
        delivery: sansio.Delivery,
        started: float,
        keep_alive: bool,
        http10: bool,
        done: asyncio.Future[bool],
    ) -> None:
        intake = self._intake
        intake.metrics.in_flight -= 1
        try:
            answer = intake.answer(delivery, done, started)
        except Exception as exc:  # not a Redis error: a bug; answered 500, never a 2xx
            intake.log.error("webhook.failed", delivery_id=delivery.id, error=type(exc).__name__)
            answer = error_answer(500, "internal_error", "the receiver failed; retry later")
        self._put(slot, answer, keep_alive, http10)

    def _answer_now(self, rejected: sansio.Rejected) -> None:
        """Refuse the request being read and close once the earlier answers are out."""
        slot = self._next_slot
        self._next_slot += 1
        self._in_message = False
        self.finish()
        self._put(slot, self._intake.reject(rejected), False, False)

    def _put(self, slot: int, answer: Answer, keep_alive: bool, http10: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the client went away; its webhooks are queued or it sends them again
        data = self._lane.encode(answer, keep_alive, http10)
        if slot != self._next_write:
            self._ready[slot] = (data, keep_alive)
            return
        transport.write(data)
        self._next_write += 1
        while self._ready:
            ready = self._ready.pop(self._next_write, None)
            if ready is None:
                break
            transport.write(ready[0])
            self._next_write += 1
            keep_alive = ready[1]
        if not keep_alive:
            transport.close()
            return
        if self._next_write == self._next_slot:
            self._all_answered()
        elif "owed" in self._pauses and self._next_slot - self._next_write <= MAX_OWED // 2:
            self._resume("owed")

    def _all_answered(self) -> None:
        transport = self._transport
        assert transport is not None
        self._resume("owed")
        if self._handoff is not None:
            self._hand_over()
        elif self._closing:
            transport.close()

    # hand-over, pauses, timeouts

    def _divert(self) -> None:
        self._in_message = False
        self._pause("handoff")
        if self._begin is None:
            self._handoff = None
            self.finish()  # offset unknown: the client resends it on a new connection
            return
        self._handoff = [self._begin, *(self._later or ())]
        if self._next_write == self._next_slot:
            self._hand_over()

    def _hand_over(self) -> None:
        transport = self._transport
        chunks = self._handoff or []
        assert transport is not None
        self._lane.forget(self)
        self._closing = True
        protocol = self._lane.aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        for chunk in chunks:
            protocol.data_received(chunk)
        if self._pauses:
            self._pauses.clear()
            transport.resume_reading()

    def _pause(self, why: str) -> None:
        if not self._pauses and self._transport is not None:
            self._transport.pause_reading()
        self._pauses.add(why)

    def _resume(self, why: str) -> None:
        if why in self._pauses:
            self._pauses.discard(why)
            if not self._pauses and self._transport is not None and not self._closing:
                self._transport.resume_reading()

    def finish(self) -> None:
        """Take no more requests; close once every owed answer is written."""
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            self._pause("closing")
            if self._next_write == self._next_slot and self._handoff is None:
                self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._lane.forget(self)

    def check_timeouts(self, now: float) -> None:
        """Called once a second: a request still arriving after BODY_READ_TIMEOUT_SECONDS is
        answered 408; a connection idle for KEEPALIVE_SECONDS is closed."""
        if self._pauses - {"writing"}:
            return  # not reading by our own choice (answers owed, a hand-over): not its delay
        if self._in_message and now - self._begun_at > self._lane.body_timeout:
            self._answer_now(sansio.body_timeout())
        elif (
            not self._in_message
            and self._next_write == self._next_slot
            and now - self._last > KEEPALIVE_SECONDS
        ):
            self.finish()
