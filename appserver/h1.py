"""HTTP/1.1 client connections on the event loop, parsed by llhttp (``--http=httptools``).

The default HTTP layer. Tornado's ``HTTP1Connection`` costs about 200 µs of
Python per request on the IOLoop thread (coroutines, futures and two timers
per request, plus a read-watch dropped and re-added each time; measured in
bench/results/history.md). Here a plain ``asyncio.Protocol`` on the same loop
hands the bytes to httptools' C parser (llhttp, the parser of Node.js) and
writes each response with one ``transport.write``. What it keeps from the
Tornado path, tested the same way:

* bodies are read whole before Django sees them, never parsed by the server;
  over ``--max_body_size`` → 413 before the body is read (chunked bodies too);
* a request head over ``--max_header_size`` → 431; a request that cannot be
  parsed → 400 naming the problem; each time the connection is then closed
  gently (see :data:`LINGER_SECONDS`) so the client reads the answer;
* ``--idle_connection_timeout`` for a keep-alive connection waiting for the
  next request head, ``--body_timeout`` for the body (408). Both are enforced
  by one sweep over all connections (:data:`SWEEP_INTERVAL`), not by a timer
  per request;
* pipelined requests are answered in order, one at a time;
* ``Expect: 100-continue`` is answered before the body is read.

Request headers with an underscore in the name are dropped before they reach
Django (wsgi.build_environ), as nginx and gunicorn do.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import httptools

from .http import LINGER_SECONDS, Exchange, accept_backlog, closing_response, encode_response

if TYPE_CHECKING:
    from .http import Frontend
    from .wsgi import Response

logger = logging.getLogger("appserver")

#: Seconds between two sweeps for timed-out connections (at most; shorter when a
#: timeout is shorter than four sweeps).
SWEEP_INTERVAL = 1.0

#: Requests read ahead on one connection (pipelining) before reading pauses.
MAX_PIPELINED = 16

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Refused(Exception):
    """Raised in a parser callback after a refusal: stops llhttp mid-buffer."""


class H1Exchange(Exchange):
    """A request read by :class:`H1Connection`."""

    __slots__ = ("conn", "keep_alive")

    def __init__(self, frontend: Frontend, conn: H1Connection) -> None:
        super().__init__(frontend)
        self.conn = conn
        self.keep_alive = True
        self.index = {}  # filled as the headers arrive

    def send(self, response: Response) -> tuple[int, int]:
        conn = self.conn
        close = not self.keep_alive or conn.server.no_keep_alive or self.frontend.worker.draining
        data, code, nbytes, close = encode_response(response, self.method == "HEAD", self.version, close)
        if conn.refusal_written:
            pass  # nothing may follow a refusal (see _refuse)
        elif conn.transport is None or conn.transport.is_closing():
            logger.info("client went away before its %d response was sent", code)
        else:
            conn.transport.write(data)
        conn.answered(self, close)
        return code, nbytes

    def abort(self) -> None:
        self.conn.close()


class H1Connection(asyncio.Protocol):
    """One client connection: parse requests, queue them, answer them in order."""

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.frontend = server.frontend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = "-"
        #: The request being parsed, from its first byte to its last.
        self.reading: H1Exchange | None = None
        self.url: list[bytes] = []
        #: Bytes of the current head: exact for the headers parsed so far, and counted
        #: from raw reads while llhttp still holds an unfinished header line.
        self.head_bytes = 0
        self.unfinished_head = 0
        self.body_bytes = 0
        self.content_length = -1
        self.expect_continue = False
        #: Parsed requests: the first is being answered, the others wait their turn.
        self.queue: collections.deque[H1Exchange] = collections.deque()
        #: loop.time() by which the current wait must end (the sweep closes it after that),
        #: and what is being waited for: "idle" (next head), "body", or "" (answering).
        self.deadline = 0.0
        self.waiting_for = "idle"
        #: No further requests are taken: the connection closes once the queue is answered.
        self.closing = False
        #: A refusal (400/408/413/431) was decided: input is read and dropped from now on.
        #: It is sent once the requests before it are answered; then the connection
        #: closes when the client does or LINGER_SECONDS pass.
        self.refused = False
        #: The refusal's bytes while it waits for those answers.
        self.refusal: bytes | None = None
        self.paused: set[str] = set()

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server.connections.add(self)
        self._wait("idle", self.server.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.closing = True
        self.reading = None

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        reading = self.reading
        # Bytes of a head that was already incomplete before this read all belong to it.
        continuing_head = reading is not None and not reading.method
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An upgrade we do not do (WebSocket, h2c): the request itself is answered
            # as plain HTTP/1.1; what follows it is not HTTP/1.1, so stop reading.
            self.closing = True
            if not self.queue:
                self.close()
            return
        except httptools.HttpParserCallbackError as exc:
            if self.refused:
                return  # a refusal stopped the parser on purpose
            logger.error("request failed inside the server", exc_info=exc.__context__ or exc)
            self._refuse(500, {"error": "internal server error while reading the request"})
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, {"error": "malformed request", "detail": _parser_detail(exc)})
            return
        reading = self.reading
        if reading is not None and not reading.method:
            # The head is still incomplete, and llhttp has no size limit of its own.
            if continuing_head:
                self.unfinished_head += len(data)
            else:  # begun in this read: what the parser has handed over so far
                self.unfinished_head = sum(map(len, self.url)) + self.head_bytes
            if self.unfinished_head > self.server.max_header_size:
                self._refuse_head()

    def eof_received(self) -> bool | None:
        # The client will send nothing more; answer what it sent, then close.
        self.closing = True
        if not self.queue or self.refusal_written:
            self.close()
        return True  # keep our side open for the answers still owed (and a refusal after them)

    @property
    def refusal_written(self) -> bool:
        return self.refused and self.refusal is None

    def pause_writing(self) -> None:
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")

    # -- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self.reading = H1Exchange(self.frontend, self)
        self.url = []
        self.head_bytes = 0
        self.body_bytes = 0
        self.content_length = -1
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.reading
        assert exchange is not None and exchange.index is not None
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        exchange.headers.append((key, text))
        self.head_bytes += len(name) + len(value) + 4
        lower = key.lower()
        index = exchange.index
        if lower in index:
            index[lower] += "," + text
        else:
            index[lower] = text
        if lower == "content-length":
            self.content_length = int(text) if text.isdigit() else -1
        elif lower == "expect" and text.lower() == "100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        exchange = self.reading
        assert exchange is not None
        parser = self.parser
        exchange.started = time.monotonic()
        exchange.method = parser.get_method().decode("latin-1")
        exchange.version = "HTTP/" + parser.get_http_version()
        exchange.target = b"".join(self.url).decode("latin-1")
        exchange.keep_alive = parser.should_keep_alive() and not self.closing
        if len(exchange.target) + self.head_bytes + 16 > self.server.max_header_size:
            self._refuse_head()
            raise _Refused
        exchange.client, exchange.scheme = self.frontend.client_address(self.peer, exchange, "http")
        if self.content_length > self.frontend.max_body_size:
            self._refuse_body(exchange, self.content_length)
            raise _Refused
        chunked = self.content_length == -1 and "transfer-encoding" in (exchange.index or ())
        if self.content_length > 0 or chunked:
            self._wait("body", self.server.body_timeout)
            if self.expect_continue and exchange.version == "HTTP/1.1" and self.transport is not None:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        exchange = self.reading
        assert exchange is not None
        self.body_bytes += len(body)
        if self.body_bytes > self.frontend.max_body_size:  # chunked: no length announced
            self._refuse_body(exchange, self.body_bytes)
            raise _Refused
        exchange.body.append(body)

    def on_message_complete(self) -> None:
        exchange = self.reading
        assert exchange is not None
        self.reading = None
        self.queue.append(exchange)
        # Whole: no deadline until the queue is answered, even behind a long request.
        self._wait("", 0)
        if len(self.queue) == 1:
            exchange.dispatch()
        elif len(self.queue) >= MAX_PIPELINED:
            self._pause("pipelined")

    # -- answering ------------------------------------------------------------------

    def answered(self, exchange: H1Exchange, close: bool) -> None:
        """``exchange``'s response is written; start the next request, or close."""
        if self.queue and self.queue[0] is exchange:
            self.queue.popleft()
        if close:
            self.closing = True
            self.queue.clear()
            self.refusal = None  # the client knows nothing after this response was taken
        if self.refusal is not None and not self.queue:
            self._send_refusal()
            return
        if self.closing and not self.queue:
            self.close()
            return
        self._resume("pipelined")
        if self.queue:
            # On the next loop turn, not from here: answers given at once (a 404, a 503)
            # would otherwise recurse once per pipelined request.
            self.server.loop.call_soon(self.queue[0].dispatch)
        elif self.reading is None or not self.reading.method:
            self._wait("idle", self.server.idle_timeout)
        else:
            self._wait("body", self.server.body_timeout)

    def close(self) -> None:
        """Close now (what was written is still sent)."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def check(self, now: float) -> None:
        """Called by the sweep: end a wait that went on too long."""
        if not self.waiting_for or now < self.deadline or self.refused:
            return
        if self.waiting_for == "body" and self.reading is not None:
            exchange = self.reading
            logger.info(
                "%s %s from %s: body not received within --body_timeout (%g s): 408",
                exchange.method,
                exchange.target,
                exchange.client,
                self.server.body_timeout,
            )
            payload = {"error": "request body not received in time", "body_timeout": self.server.body_timeout}
            self._refuse(408, payload, exchange)
        else:
            self.close()  # an idle keep-alive connection (or a head that never ended)

    # -- helpers ----------------------------------------------------------------------

    def _wait(self, what: str, seconds: float) -> None:
        self.waiting_for = what
        self.deadline = self.server.loop.time() + seconds if what else 0.0

    def _pause(self, reason: str) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if not self.paused and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def _refuse_head(self) -> None:
        limit = self.server.max_header_size
        logger.info("request head from %s is over --max_header_size (%d bytes): 431", self.peer, limit)
        self._refuse(431, {"error": "request line and headers too large", "max_header_size": limit})

    def _refuse_body(self, exchange: H1Exchange, length: int) -> None:
        limit = self.frontend.max_body_size
        payload = {"error": "request body too large", "content_length": length, "max_body_size": limit}
        self._refuse(413, payload, exchange)

    def _refuse(self, code: int, payload: dict[str, Any], exchange: H1Exchange | None = None) -> None:
        """Answer ``code`` and close, reading and dropping what the client still sends.

        Requests the client sent before the refused one, already read whole, are
        answered first (HTTP/1.1 answers in order); the refusal follows them.
        """
        head, body = closing_response(code, payload)
        self.closing = self.refused = True
        self.reading = None
        self.refusal = head + body
        if exchange is not None:
            exchange.log(code, len(body))
        else:
            self.frontend.worker.metrics.observe("-", code, 0.0)
        if self.queue:
            # Keep reading (and dropping) meanwhile: a client still sending a body it
            # cannot finish would otherwise never read the answers.
            self._wait("", 0)
            self._read_and_drop()
            return
        self._send_refusal()

    def _send_refusal(self) -> None:
        """Write the refusal decided by :meth:`_refuse`, half-close, and linger."""
        refusal, self.refusal = self.refusal, None
        self._wait("", 0)
        transport = self.transport
        if transport is None or refusal is None:
            return
        transport.write(refusal)
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        self._read_and_drop()  # eof_received or the timer closes
        self.server.loop.call_later(LINGER_SECONDS, self.close)

    def _read_and_drop(self) -> None:
        """Read whatever the client still sends (data_received drops it once refused)."""
        self.paused.clear()
        if self.transport is not None:
            self.transport.resume_reading()


def _parser_detail(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.removeprefix("invalid ").strip() or "invalid request"


class H1Server:
    """Listening sockets and client connections of :class:`H1Connection`."""

    def __init__(self, frontend: Frontend, options: Any) -> None:
        self.frontend = frontend
        self.loop = asyncio.get_running_loop()
        self.max_header_size: int = options.max_header_size
        self.idle_timeout: float = options.idle_connection_timeout
        self.body_timeout: float = options.body_timeout
        self.connections: set[H1Connection] = set()
        #: Set when draining: every connection closes after its current response.
        self.no_keep_alive = False
        self._servers: list[asyncio.AbstractServer] = []
        self._sockets: list[socket.socket] = []
        #: Connections taken from the accept queue while stopping, not yet set up.
        self._adopting: set[asyncio.Future[Any]] = set()
        self._sweep_every = min(SWEEP_INTERVAL, self.idle_timeout / 4, self.body_timeout / 4)
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            server = await self.loop.create_server(lambda: H1Connection(self), sock=sock, backlog=1024)
            self._servers.append(server)
            self._sockets.append(sock)
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    @property
    def connection_count(self) -> int:
        return len(self.connections) + len(self._adopting)

    def stop(self) -> None:
        """Stop accepting connections (the listening sockets close).

        Connections the kernel completed but nobody accepted yet are taken over
        first (see :func:`accept_backlog`), so that closing does not reset them.
        """
        for sock in self._sockets:
            for conn, _ in accept_backlog(sock):
                adopt = asyncio.ensure_future(
                    self.loop.connect_accepted_socket(lambda: H1Connection(self), conn)
                )
                self._adopting.add(adopt)
                adopt.add_done_callback(self._adopted)
        self._sockets.clear()
        for server in self._servers:
            server.close()

    def _adopted(self, adopt: asyncio.Future[Any]) -> None:
        self._adopting.discard(adopt)
        if not adopt.cancelled() and adopt.exception() is not None:
            logger.warning("draining: could not set up a waiting connection: %s", adopt.exception())

    async def close_all_connections(self) -> None:
        for conn in list(self.connections):
            conn.close()
        deadline = time.monotonic() + 2.0
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._sweeper is not None:
            self._sweeper.cancel()

    def _sweep(self) -> None:
        now = self.loop.time()
        try:
            for conn in list(self.connections):
                conn.check(now)
        finally:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)
