"""HTTP front of a worker: read whole requests on the IOLoop, hand them to Django.

:class:`Frontend` is the ``HTTPServerConnectionDelegate`` given to Tornado's
``HTTPServer``. For each request a :class:`RequestReader` collects the body
(never parsing it: Django does that, with Django's own limits), refuses an
oversized one with 413 before reading it, and then either answers an internal
endpoint (``/-/health``) on the IOLoop or queues the request for the Django
thread and writes the response when it comes back.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from tornado import httputil
from tornado.iostream import StreamClosedError

from .accesslog import AccessLog
from .wsgi import Response, build_environ, call_application, internal_error

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("appserver")

_date_cache: list[Any] = [0, ""]


def http_date() -> str:
    """The current time as an HTTP ``Date`` value (formatted at most once a second)."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, email.utils.formatdate(now, usegmt=True)]
    return _date_cache[1]  # type: ignore[no-any-return]


def json_response(code: int, payload: Any, reason: str | None = None) -> Response:
    """A JSON response tuple as the Django thread would produce it."""
    body = (json.dumps(payload, indent=None, separators=(",", ":")) + "\n").encode()
    return (
        code,
        reason or httputil.responses.get(code, "Unknown"),
        [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
        body,
    )


class Frontend(httputil.HTTPServerConnectionDelegate):
    """Creates one :class:`RequestReader` per request."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.access_log = AccessLog(worker.options.access_log_format, worker.port)
        self.internal_prefix = worker.options.internal_prefix
        self.max_body_size = worker.options.max_body_size
        #: Requests read but not answered yet (queued for Django or running).
        self.in_flight: set[RequestReader] = set()

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return RequestReader(self, request_conn)


class RequestReader(httputil.HTTPMessageDelegate):
    """One request: buffer it, dispatch it, write its response, log it."""

    __slots__ = ("frontend", "conn", "start_line", "headers", "chunks", "started", "rejected")

    def __init__(self, frontend: Frontend, conn: httputil.HTTPConnection) -> None:
        self.frontend = frontend
        self.conn = conn
        self.start_line: httputil.RequestStartLine | None = None
        self.headers: httputil.HTTPHeaders | None = None
        self.chunks: list[bytes] = []
        self.started = 0.0
        self.rejected = False

    # -- HTTPMessageDelegate ------------------------------------------------

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.started = time.monotonic()
        self.start_line = start_line
        self.headers = headers
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.frontend.max_body_size:
            self._refuse_body(int(length))

    def data_received(self, chunk: bytes) -> None:
        if not self.rejected:
            self.chunks.append(chunk)

    def finish(self) -> None:
        if self.rejected:
            return
        frontend = self.frontend
        frontend.in_flight.add(self)
        assert self.start_line is not None
        path = self.start_line.path
        if path.startswith(frontend.internal_prefix):
            handler = frontend.worker.endpoints.get(path.partition("?")[0][len(frontend.internal_prefix):])
            if handler is None:
                self._respond(json_response(404, {"error": "no such server endpoint", "path": path}))
            else:
                self._await(handler(self))
            return
        self._await(self._run_django())

    def on_connection_close(self) -> None:
        self.chunks = []

    # -- dispatch -------------------------------------------------------------

    def _await(self, coro: Awaitable[Response]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Future[Response]) -> None:
        try:
            response = task.result()
        except Exception:
            logger.exception("request failed inside the server")
            response = json_response(500, {"error": "internal server error"})
        self._respond(response)

    async def _run_django(self) -> Response:
        worker = self.frontend.worker
        assert self.start_line is not None and self.headers is not None
        context = self.conn.context  # type: ignore[attr-defined]
        environ = build_environ(
            self.start_line.method,
            self.start_line.path,
            self.start_line.version,
            self.headers,
            b"".join(self.chunks),
            context.remote_ip,
            context.protocol,
            worker.port,
        )
        self.chunks = []
        app = worker.application
        return await worker.django.submit(
            lambda: call_application(app, environ), f"{self.start_line.method} {self.start_line.path}"
        )

    # -- responses --------------------------------------------------------------

    def _respond(self, response: Response) -> None:
        self.frontend.in_flight.discard(self)
        try:
            code, nbytes = self._write(response)
        except Exception:
            # A response we cannot encode (e.g. a header with a newline) must
            # still answer the client: the app's error becomes a plain 500.
            logger.exception("invalid response from the application; sending 500")
            try:
                code, nbytes = self._write(internal_error("Internal Server Error (invalid response)"))
            except Exception:
                self.conn.close()  # type: ignore[attr-defined]
                code, nbytes = 500, 0
        assert self.start_line is not None
        self.frontend.access_log.log(
            self.conn.context.remote_ip,  # type: ignore[attr-defined]
            self.start_line,
            self.headers,
            code,
            nbytes,
            self.started,
        )

    def _write(self, response: Response) -> tuple[int, int]:
        code, reason, header_list, body = response
        assert self.start_line is not None
        headers = httputil.HTTPHeaders()
        for name, value in header_list:
            headers.add(name, value.strip())
        if "Date" not in headers:
            headers["Date"] = http_date()
        has_body = code >= 200 and code not in (204, 304)
        if has_body and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        send_body = bool(has_body and self.start_line.method != "HEAD" and body)
        try:
            self.conn.write_headers(
                httputil.ResponseStartLine("HTTP/1.1", code, reason or httputil.responses.get(code, "Unknown")),
                headers,
                chunk=body if send_body else None,
            )
            self.conn.finish()
        except StreamClosedError:
            logger.info("client went away before its %d response was sent", code)
        return code, len(body) if send_body else 0

    def _refuse_body(self, length: int) -> None:
        """413 without reading the body, then close: the only way not to read it."""
        self.rejected = True
        limit = self.frontend.max_body_size
        code, reason, header_list, body = json_response(
            413,
            {"error": "request body too large", "content_length": length, "max_body_size": limit},
        )
        headers = httputil.HTTPHeaders(header_list)
        headers["Date"] = http_date()
        headers["Content-Length"] = str(len(body))
        headers["Connection"] = "close"
        head = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.get_all())
        remote_ip = self.conn.context.remote_ip  # type: ignore[attr-defined]
        stream = self.conn.detach()  # type: ignore[attr-defined]
        assert self.start_line is not None
        self.frontend.access_log.log(remote_ip, self.start_line, self.headers, code, len(body), self.started)
        try:
            stream.write(head.encode("latin-1") + b"\r\n" + body).add_done_callback(lambda _f: stream.close())
        except StreamClosedError:
            pass


Endpoint = Callable[[RequestReader], Awaitable[Response]]
