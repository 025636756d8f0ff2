"""HTTP front of a worker: read whole requests on the IOLoop, hand them to Django.

:class:`Frontend` is the ``HTTPServerConnectionDelegate`` given to Tornado's
``HTTPServer``. For each request a :class:`RequestReader` collects the body
(never parsing it: Django does that, with Django's own limits), refuses an
oversized one with 413 before reading it, and then either answers an internal
endpoint (``/-/health``, ``/-/metrics``) on the IOLoop, or queues the request
for the Django thread (503 with ``Retry-After`` when ``--max_queue`` requests
already wait) and writes the response when it comes back.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError

from .accesslog import AccessLog
from .config import parse_networks
from .wsgi import Response, build_environ, call_application, internal_error

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("appserver")

_date_cache: list[Any] = [0, ""]

#: RFC 9110 header names (tokens), and the characters no header value may hold
#: (control characters except tab: CR and LF above all). Tornado's own
#: ``HTTPHeaders.add`` checks the same with slower regexes on every call.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0A-\x1F\x7F]")
#: What encode_response does with a response header, by its name (cached per name:
#: applications send the same few again and again). Only valid names are cached.
_PLAIN, _DATE, _LENGTH, _CONNECTION, _DROP = range(5)
_SPECIAL_NAMES = {
    "date": _DATE,
    "content-length": _LENGTH,
    "connection": _CONNECTION,
    "transfer-encoding": _DROP,
}
_name_kinds: dict[str, int] = {}


def _name_kind(name: str) -> int:
    """The kind of a response header name; ValueError for a name that is not a token."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid response header name {name!r}")
    kind = _SPECIAL_NAMES.get(name.lower(), _PLAIN)
    if len(_name_kinds) < 256:
        _name_kinds[name] = kind
    return kind


#: Response header values already found clean (most repeat: content types, policies).
_clean_values: set[str] = set()


def _checked_value(name: str, value: str | bytes) -> str:
    if value in _clean_values:
        return value  # type: ignore[return-value]
    if isinstance(value, bytes):  # not WSGI, but Tornado's own check let it through
        value = value.decode("utf-8")
    stripped = value.strip()
    if _FORBIDDEN_IN_VALUE.search(stripped):
        raise ValueError(f"invalid value for response header {name!r}: {stripped!r}")
    if stripped is value and len(_clean_values) < 1024 and len(value) <= 256:
        _clean_values.add(value)
    return stripped


def checked_headers(header_list: list[tuple[str, str]]) -> Iterator[tuple[str, int, str]]:
    """The application's headers as (name, kind, value), each checked; ValueError for an
    invalid name or value (one that could split the response)."""
    kinds = _name_kinds
    for name, value in header_list:
        kind = kinds.get(name)
        if kind is None:
            kind = _name_kind(name)
        yield name, kind, _checked_value(name, value)


def response_headers(header_list: list[tuple[str, str]]) -> httputil.HTTPHeaders:
    """The application's headers as ``HTTPHeaders`` (for ``--http=tornado``)."""
    headers = httputil.HTTPHeaders()
    for name, _, value in checked_headers(header_list):
        if name in headers:
            headers.add(name, value)  # a repeated header (Set-Cookie): kept as a list
        else:
            headers[name] = value
    return headers


_NO_BODY = frozenset({204, 304})


def encode_response(
    response: Response, head_request: bool, version: str, close: bool
) -> tuple[bytes, int, int, bool]:
    """A response as bytes to write: (data, status, body bytes sent, close after it).

    Adds ``Date`` and ``Content-Length`` when the application did not, and
    ``Connection: close`` (or ``keep-alive`` for an HTTP/1.0 client that asked
    for it). ValueError for an invalid header, or a ``Content-Length`` that
    does not match the body: sent as is, it would desynchronise the connection.
    """
    code, reason, header_list, body = response
    lines = [f"HTTP/1.1 {code} {reason or httputil.responses.get(code, 'Unknown')}\r\n"]
    has_date = False
    length: str | None = None
    for name, kind, value in checked_headers(header_list):
        if kind:
            if kind == _DATE:
                has_date = True
            elif kind == _LENGTH:
                length = value
                continue  # written below, once, after it is checked
            elif kind == _CONNECTION:
                close = close or "close" in value.lower()
                continue  # ours below says what this connection does
            else:
                continue  # Transfer-Encoding: the body is whole, Content-Length describes it
        lines.append(f"{name}: {value}\r\n")
    if not has_date:
        lines.append(f"Date: {http_date()}\r\n")
    has_body = code >= 200 and code not in _NO_BODY
    if has_body:
        if length is None:
            length = str(len(body))
        elif not head_request and length != str(len(body)):
            raise ValueError(f"Content-Length {length} does not match the body ({len(body)} bytes)")
        lines.append(f"Content-Length: {length}\r\n")
    if close:
        lines.append("Connection: close\r\n\r\n")
    elif version == "HTTP/1.0":
        lines.append("Connection: keep-alive\r\n\r\n")
    else:
        lines.append("\r\n")
    data = "".join(lines).encode("latin-1")
    if has_body and not head_request and body:
        return data + body, code, len(body), close
    return data, code, 0, close


def http_date() -> str:
    """The current time as an HTTP ``Date`` value (formatted at most once a second)."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, email.utils.formatdate(now, usegmt=True)]
    return _date_cache[1]  # type: ignore[no-any-return]


def json_response(code: int, payload: Any, reason: str | None = None) -> Response:
    """A JSON response tuple as the Django thread would produce it."""
    body = (json.dumps(payload, separators=(",", ":")) + "\n").encode()
    return (
        code,
        reason or httputil.responses.get(code, "Unknown"),
        [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
        body,
    )


def closing_response(code: int, payload: Any) -> tuple[bytes, bytes]:
    """A JSON response with ``Connection: close`` as raw bytes: (head, body).

    For the answers written straight to a socket, outside Tornado's response
    path: a refused body (413) or request head (431).
    """
    _, reason, header_list, body = json_response(code, payload)
    headers = [
        *header_list,
        ("Date", http_date()),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    head = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1"), body


_valid_addresses: dict[str, bool] = {}


def is_ip_address(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (cached: clients come back)."""
    known = _valid_addresses.get(text)
    if known is None:
        try:
            ipaddress.ip_address(text)
            known = True
        except ValueError:
            known = False
        if len(_valid_addresses) < 4096:
            _valid_addresses[text] = known
    return known


class AddressSet:
    """Membership test for a list of networks, cached per address."""

    def __init__(self, spec: str) -> None:
        self.networks = parse_networks(spec)
        self._cache: dict[str, bool] = {}

    def __contains__(self, address: str) -> bool:
        known = self._cache.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
                known = any(ip in net for net in self.networks)
            except ValueError:
                known = False
            if len(self._cache) < 4096:
                self._cache[address] = known
        return known


class Frontend(httputil.HTTPServerConnectionDelegate):
    """Creates one :class:`RequestReader` per request; holds what they share."""

    def __init__(self, worker: Worker) -> None:
        options = worker.options
        self.worker = worker
        self.access_log = AccessLog(options.log_format, worker.port)
        self.internal_prefix: str = options.internal_prefix
        self.max_body_size: int = options.max_body_size
        self.max_queue: int = options.max_queue
        self.xheaders: bool = options.xheaders
        self.trusted_proxies = AddressSet(options.trusted_proxies)
        self.internal_allow = AddressSet(options.internal_allow)
        #: Requests read but not answered yet (queued for Django or running).
        self.in_flight: set[Exchange] = set()
        self.django_requests = 0

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return RequestReader(self, request_conn)

    def client_address(self, peer: str, request: Exchange, scheme: str) -> tuple[str, str]:
        """The client's address and scheme, believing forwarded headers only from trusted proxies."""
        if not self.xheaders or peer not in self.trusted_proxies:
            return peer, scheme
        client = peer
        forwarded_for = request.header("x-forwarded-for")
        if forwarded_for:
            # Walk from the nearest hop outwards; the first untrusted one is the client.
            hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
            for hop in reversed(hops):
                client = hop
                if hop not in self.trusted_proxies:
                    break
        else:
            real_ip = request.header("x-real-ip").strip()
            if real_ip:
                client = real_ip
        if client != peer and not is_ip_address(client):
            client = peer  # garbage in the header: keep the real peer
        proto = (
            (request.header("x-forwarded-proto") or request.header("x-scheme")).split(",")[-1].strip().lower()
        )
        return client, proto if proto in ("http", "https") else scheme


class Exchange:
    """One request and its answer, whatever HTTP/1.1 implementation read it.

    A connection fills in the request line, headers and body, then calls
    :meth:`dispatch`: the request goes to an internal endpoint (on the loop) or
    to the Django thread, and :meth:`respond` writes whatever comes back
    through the connection's :meth:`send`, counts it and logs it.
    """

    __slots__ = (
        "body",
        "client",
        "frontend",
        "headers",
        "index",
        "method",
        "scheme",
        "started",
        "target",
        "version",
    )

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.method = ""
        self.target = ""
        self.version = "HTTP/1.1"
        #: Request headers in arrival order, names as sent.
        self.headers: list[tuple[str, str]] = []
        #: The same by lower-case name, repeated ones joined by commas (built when first needed).
        self.index: dict[str, str] | None = None
        self.body: list[bytes] = []
        self.started = 0.0
        self.client = "-"
        self.scheme = "http"

    def header(self, name: str, default: str = "") -> str:
        """The header ``name`` (lower case), repeated ones joined by commas; else ``default``."""
        index = self.index
        if index is None:
            index = self.index = {}
            for key, value in self.headers:
                lower = key.lower()
                index[lower] = index[lower] + "," + value if lower in index else value
        return index.get(name, default)

    def send(self, response: Response) -> tuple[int, int]:
        """Write ``response``; return (status, body bytes sent). Raises on an invalid response."""
        raise NotImplementedError

    # -- dispatch -------------------------------------------------------------

    def dispatch(self) -> None:
        """The whole request is here: answer it on the loop or queue it for Django."""
        frontend = self.frontend
        path = self.target
        frontend.in_flight.add(self)
        if path.startswith(frontend.internal_prefix):
            self._internal(path)
            return
        django = frontend.worker.django
        # pending counts the job running now; --max_queue is how many requests may wait
        # behind it (the server's own jobs, such as a health check, do not count).
        if django.pending - django.internal > frontend.max_queue:
            frontend.worker.metrics.rejected.inc()
            code, reason, headers, body = json_response(
                503, {"error": "server busy: request queue full", "max_queue": frontend.max_queue}
            )
            self.respond((code, reason, [*headers, ("Retry-After", "1")], body))
            return
        try:
            self._submit_to_django()
        except Exception:
            logger.exception("request failed inside the server")
            self.respond(internal_error())

    def _internal(self, path: str) -> None:
        frontend = self.frontend
        if self.client not in frontend.internal_allow:
            self.respond(json_response(403, {"error": "server endpoints are not open to this address"}))
            return
        name = path.partition("?")[0][len(frontend.internal_prefix) :]
        handler = frontend.worker.endpoints.get(name)
        if handler is None:
            self.respond(json_response(404, {"error": "no such server endpoint", "path": path}))
        else:
            task = asyncio.ensure_future(handler(self))
            task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Future[Response]) -> None:
        try:
            response = task.result()
        except Exception:
            logger.exception("request failed inside the server")
            response = internal_error()
        self.respond(response)

    def _submit_to_django(self) -> None:
        """Queue the request on the Django thread now, so the next request's queue check sees it."""
        frontend = self.frontend
        worker = frontend.worker
        environ = build_environ(
            self.method,
            self.target,
            self.version,
            self.headers,
            b"".join(self.body),
            self.client,
            self.scheme,
            worker.port,
        )
        self.body = []
        app = worker.application
        assert app is not None
        frontend.django_requests += 1
        worker.django.call(partial(call_application, app, environ), self._django_done, self)

    def _django_done(self, response: Response | None, error: BaseException | None) -> None:
        if error is not None or response is None:
            logger.error("request failed inside the server", exc_info=error)
            response = internal_error()
        # Before responding: at --max_requests the drain starts now, and this
        # last response already tells the client to reconnect elsewhere.
        self.frontend.worker.request_done(self.frontend.django_requests)
        self.respond(response)

    def __str__(self) -> str:
        return f"{self.method} {self.target}" if self.method else "(request)"

    # -- responses --------------------------------------------------------------

    def respond(self, response: Response) -> None:
        """Send the answer (a 500 if it cannot be encoded), count it and log it."""
        frontend = self.frontend
        frontend.in_flight.discard(self)
        try:
            code, nbytes = self.send(response)
        except Exception:
            # A response we cannot encode (e.g. a header with a newline) must
            # still answer the client: the app's error becomes a plain 500.
            logger.exception("invalid response from the application; sending 500")
            try:
                code, nbytes = self.send(internal_error("Internal Server Error (invalid response)"))
            except Exception:
                self.abort()
                code, nbytes = 500, 0
        self.log(code, nbytes)

    def log(self, code: int, nbytes: int) -> None:
        """Count and log this request as answered with ``code``."""
        frontend = self.frontend
        frontend.worker.metrics.observe(self.method, code, time.monotonic() - self.started)
        frontend.access_log.log(self, code, nbytes)

    def abort(self) -> None:
        """Drop the client connection (nothing sensible can be sent)."""
        raise NotImplementedError


class RequestReader(Exchange, httputil.HTTPMessageDelegate):
    """A request read by Tornado's own HTTP/1.1 code (``--http=tornado``)."""

    __slots__ = ("conn", "rejected")

    def __init__(self, frontend: Frontend, conn: httputil.HTTPConnection) -> None:
        super().__init__(frontend)
        self.conn = conn
        self.rejected = False

    # -- HTTPMessageDelegate ------------------------------------------------

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.started = time.monotonic()
        self.method, self.target, self.version = start_line
        self.headers = list(headers.get_all())
        context = self.conn.context  # type: ignore[attr-defined]
        self.client, self.scheme = self.frontend.client_address(context.remote_ip, self, context.protocol)
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.frontend.max_body_size:
            self._refuse_body(int(length))

    def data_received(self, chunk: bytes) -> None:
        if not self.rejected:
            self.body.append(chunk)

    def finish(self) -> None:
        if not self.rejected:
            self.dispatch()

    def on_connection_close(self) -> None:
        self.body = []

    # -- responses --------------------------------------------------------------

    def send(self, response: Response) -> tuple[int, int]:
        code, reason, header_list, body = response
        headers = response_headers(header_list)
        if "Date" not in headers:
            headers["Date"] = http_date()
        has_body = code >= 200 and code not in (204, 304)
        if has_body and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        if self.frontend.worker.draining:
            headers["Connection"] = "close"  # clients reconnect to a worker that stays
        send_body = bool(has_body and self.method != "HEAD" and body)
        try:
            self.conn.write_headers(
                httputil.ResponseStartLine(
                    "HTTP/1.1", code, reason or httputil.responses.get(code, "Unknown")
                ),
                headers,
                chunk=body if send_body else None,
            )
            self.conn.finish()
        except StreamClosedError:
            logger.info("client went away before its %d response was sent", code)
        return code, len(body) if send_body else 0

    def abort(self) -> None:
        self.conn.close()  # type: ignore[attr-defined]

    def _refuse_body(self, length: int) -> None:
        """413 without reading the body, then close: the only way not to read it."""
        self.rejected = True
        limit = self.frontend.max_body_size
        head, body = closing_response(
            413, {"error": "request body too large", "content_length": length, "max_body_size": limit}
        )
        stream = self.conn.detach()  # type: ignore[attr-defined]
        self.log(413, len(body))
        try:
            stream.write(head + body).add_done_callback(lambda _f: stream.close())
        except StreamClosedError:
            pass


Endpoint = Callable[[Exchange], Awaitable[Response]]


# -- client connections: what Tornado answers (or not) before a request reaches us --------------

#: What Tornado writes for a request it cannot parse (tornado/http1connection.py), then closes.
TORNADO_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"

#: Seconds a connection refused with 431 keeps reading (and dropping) what the client still
#: sends: closing with unread input would reset the connection before the client reads the 431.
LINGER_SECONDS = 2.0


class ClientStream(IOStream):
    """A client connection, fixing two answers Tornado gives before any request is read.

    * A request head over ``--max_header_size``: Tornado just closes the
      connection, so the client gets no response at all (and a proxy in front
      reports a 502 for the client's error). Here it gets 431.
    * A request Tornado cannot parse gets Tornado's bare 400, which has no
      ``Date`` (RFC 9110 6.6.1) and no ``Content-Length``; here it has both.

    Also, ``TCP_NODELAY`` is set once for the connection's lifetime: Tornado
    turns it off and on around every request (two ``setsockopt`` calls), which
    only matters for responses written in pieces, and ours are written whole.
    """

    frontend: Frontend

    def set_nodelay(self, value: bool) -> None:
        pass  # always on (see the class doc)

    def write(self, data: bytes | memoryview) -> asyncio.Future[None]:
        if data == TORNADO_BARE_400:
            data = (
                f"HTTP/1.1 400 Bad Request\r\nDate: {http_date()}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
        return super().write(data)

    def close(self, exc_info: Any = False) -> None:
        # The request head is the only read with a regex (the blank line) and a size limit.
        head_too_large = isinstance(exc_info, UnsatisfiableReadError) and self._read_regex is not None
        if head_too_large and not self.closed():
            refuse_large_head(self.frontend, self.socket)
        super().close(exc_info)


class HTTPFront(HTTPServer):
    """Tornado's ``HTTPServer``, with :class:`ClientStream` client connections."""

    @property
    def connection_count(self) -> int:
        """Client connections open now (idle keep-alive ones included)."""
        return len(self._connections)

    @property
    def no_keep_alive(self) -> bool:
        """Whether every connection closes after its response (set when draining)."""
        return bool(self.conn_params.no_keep_alive)

    @no_keep_alive.setter
    def no_keep_alive(self, value: bool) -> None:
        self.conn_params.no_keep_alive = value

    def stop(self) -> None:
        """Stop listening; first take over the connections waiting to be accepted."""
        if not self._stopped:
            for sock in self._sockets.values():
                for conn, address in accept_backlog(sock):
                    self._handle_connection(conn, address)
        super().stop()

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if type(stream) is IOStream:
            IOStream.set_nodelay(stream, True)
            stream.__class__ = ClientStream
            stream.frontend = self.request_callback  # type: ignore[attr-defined]
        super().handle_stream(stream, address)


def accept_backlog(sock: socket.socket) -> Iterator[tuple[socket.socket, Any]]:
    """Accept the connections waiting in ``sock``'s accept queue, without blocking.

    Called just before a draining worker closes a listening socket: the kernel
    has completed these connections (their clients may have sent a request
    already) and closing the socket would reset every one of them. They wait
    there whenever the loop is busy, and under ``--django_mode=inline`` that is
    for as long as each request runs.
    """
    while True:
        try:
            conn, address = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. EMFILE: what is left there is lost either way
            logger.warning("draining: could not accept a waiting connection: %s", exc)
            return
        conn.setblocking(False)
        yield conn, address


def refuse_large_head(frontend: Frontend, sock: socket.socket) -> None:
    """Answer 431 on ``sock`` and close it gently (see :data:`LINGER_SECONDS`)."""
    started = time.monotonic()
    limit = frontend.worker.options.max_header_size
    head, body = closing_response(
        431, {"error": "request line and headers too large", "max_header_size": limit}
    )
    try:
        peer = sock.getpeername()[0]
        conn = sock.dup()  # outlives Tornado's close of the original
    except OSError:
        return
    logger.info("request head from %s is over --max_header_size (%d bytes): 431", peer, limit)
    frontend.worker.metrics.observe("-", 431, time.monotonic() - started)
    try:
        conn.setblocking(False)
        conn.send(head + body)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        conn.close()
        return
    loop = asyncio.get_running_loop()

    def done() -> None:
        timer.cancel()
        loop.remove_reader(conn)
        conn.close()

    def discard() -> None:
        try:
            if conn.recv(65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        done()  # the client has closed its side

    timer = loop.call_later(LINGER_SECONDS, done)
    loop.add_reader(conn, discard)
