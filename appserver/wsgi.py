"""Calling a WSGI application (Django) for one buffered request.

Why not ``tornado.wsgi.WSGIContainer`` as it is (Tornado 6.6, see
../shared/FINDINGS.md §3): it lets Tornado parse form bodies first (more than
1,000 fields or 100 files become a bare 400 before Django sees them), it hops
to its executor once per response chunk, an exception escaping the app leaves
the client hanging, it adds no ``Date`` header and logs through its own
logger. Here the environ is built straight from the request line and headers,
the whole application call (including iterating and closing the response)
is one job on the Django thread, and any exception becomes a 500.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

logger = logging.getLogger("appserver.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: What the Django thread hands back: status code, reason, headers, body.
Response = tuple[int, str, list[tuple[str, str]], bytes]

_SPECIAL = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})
#: Request header name (as sent) → environ key; None for a name that is dropped.
_environ_keys: dict[str, str | None] = {}


def _environ_key(name: str) -> str | None:
    if "_" in name:
        # Dropped, as nginx and gunicorn do: "X_Forwarded_For" would otherwise land in
        # the same environ key as "X-Forwarded-For" and could pass for it.
        key = None
    else:
        upper = name.upper().replace("-", "_")
        key = upper if upper in _SPECIAL else "HTTP_" + upper
    if len(_environ_keys) < 1024:
        _environ_keys[name] = key
    return key


def build_environ(
    method: str,
    target: str,
    version: str,
    headers: list[tuple[str, str]],
    body: bytes,
    remote_ip: str,
    scheme: str,
    server_port: int,
) -> dict[str, Any]:
    """The WSGI environ for one request (PEP 3333 strings: latin-1 code points)."""
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1") if "%" in path else path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": remote_ip,
        "SERVER_PROTOCOL": version,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    keys = _environ_keys
    for name, value in headers:
        key = keys.get(name, "")
        if key == "":
            key = _environ_key(name)
        if key is None:
            continue
        if key in environ:
            environ[key] += "," + value  # repeated headers are joined (RFC 9110 5.3)
        else:
            environ[key] = value
    host = environ.get("HTTP_HOST", "")
    if host.startswith("["):
        server_name, _, port = host[1:].partition("]")
        port = port.lstrip(":")
    else:
        server_name, _, port = host.partition(":")
    environ["SERVER_NAME"] = server_name or "localhost"
    environ["SERVER_PORT"] = port or str(server_port)
    if body and "CONTENT_LENGTH" not in environ:
        # A chunked body, already joined: Django reads CONTENT_LENGTH bytes, none without it.
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def internal_error(message: str = "Internal Server Error") -> Response:
    """A plain 500 the client always gets when the application itself failed."""
    body = (message + "\n").encode()
    return 500, "Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")], body


def call_application(app: WSGIApp, environ: dict[str, Any]) -> Response:
    """Run ``app`` for ``environ`` to completion; never raises."""
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return chunks.append

    try:
        result = app(environ, start_response)
        try:
            for chunk in result:
                if chunk:
                    chunks.append(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()  # Django sends request_finished here: the DB connection goes back
    except Exception:
        logger.exception(
            "unhandled exception in the WSGI application for %s %s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
        )
        return internal_error()
    if not started:
        logger.error("the WSGI application returned without calling start_response")
        return internal_error()
    status, headers = started
    code, _, reason = status.partition(" ")
    try:
        return int(code), reason, headers, b"".join(chunks)
    except ValueError:
        logger.error("the WSGI application sent an invalid status line %r", status)
        return internal_error()
