"""The access log: one line per answered request, through ``logging``.

Logger ``appserver.access``; ``--log_format`` picks ``combined`` (the
Apache/nginx combined format plus latency and port), ``json`` (one object per
line, for log shippers) or ``off``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from tornado.log import LogFormatter

if TYPE_CHECKING:
    from .http import Exchange

logger = logging.getLogger("appserver.access")

_clf_cache: list[Any] = [0, ""]


def _clf_time() -> str:
    now = int(time.time())
    if _clf_cache[0] != now:
        _clf_cache[:] = [now, time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))]
    return _clf_cache[1]  # type: ignore[no-any-return]


class PortFormatter(LogFormatter):
    """Tornado's formatter (the worker's port in the prefix), formatting its
    second-resolution timestamp once a second instead of once a line."""

    _time_cache: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached_second, text = self._time_cache
        if cached_second != second:
            text = super().formatTime(record, datefmt)
            self._time_cache = (second, text)
        return text


class JSONFormatter(logging.Formatter):
    """Every log record as one JSON object (for ``--log_format=json``)."""

    def __init__(self, port: int | str) -> None:
        super().__init__()
        self.port = port

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "port": self.port,
            "pid": record.process,
        }
        message = record.getMessage()
        if record.name == logger.name and message.startswith("{"):
            entry["access"] = json.loads(message)
        else:
            entry["message"] = message
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _emit(level: int, msg: str, args: tuple[Any, ...]) -> None:
    """``logger.log(level, msg, *args)`` without the caller lookup.

    ``Logger.log`` walks the stack to name the calling function for every
    record; for an access line that is always :meth:`AccessLog.log`, so the
    record is made with that answer directly (about a seventh of the cost of
    a line).
    """
    record = logger.makeRecord(logger.name, level, __file__, _LOG_LINE, msg, args, None, "log")
    logger.handle(record)


#: Stands for the message in a sample record formatted once a second (see _direct_route).
_MARK = "\x00message\x00"

#: (handler, text before the message, text after it) for each handler a record reaches.
Route = list[tuple[logging.StreamHandler, str, str]]  # type: ignore[type-arg]


def _direct_route(level: int) -> Route | None:
    """Where an access record of ``level`` would be written, if logging can be skipped.

    That is when the record would reach only the root logger's own plain
    stream handlers (the server's stderr), through no filter, each formatting
    it as :class:`PortFormatter` does without colours: the line is then a
    fixed text for the second and level, the message, and a fixed text after
    it. Those texts come from formatting one real record per second with the
    handler's own formatter, so the line is the one logging would write. Any
    other set-up (a handler, filter or record factory of the user's, colours,
    a disabled logger, JSON lines) gives None: the record goes through logging.
    """
    if logging.getLogRecordFactory() is not logging.LogRecord or logger.filters:
        return None
    node: logging.Logger | None = logger
    root = logging.getLogger()
    while node is not None and node is not root:
        if node.handlers or node.disabled or not node.propagate:
            return None
        node = node.parent
    if not root.handlers:
        return None
    sample = logger.makeRecord(logger.name, level, __file__, _LOG_LINE, _MARK, (), None, "log")
    route: Route = []
    for handler in root.handlers:
        formatter = handler.formatter
        if (
            type(handler) is not logging.StreamHandler
            or handler.filters
            or not isinstance(formatter, PortFormatter)
            or formatter._colors  # type: ignore[attr-defined]
        ):
            return None
        if level < handler.level:
            continue
        head, mark, tail = formatter.format(sample).partition(_MARK)
        if not mark or _MARK in tail:
            return None
        route.append((handler, head, tail + handler.terminator))
    return route


class AccessLog:
    """Formats and emits access log lines for one worker."""

    def __init__(self, fmt: str, port: int) -> None:
        self.format = fmt
        self.port = port
        #: The second and, by level, the route of access lines that skip logging (see _direct_route).
        self._routes_second = -1
        self._routes: dict[int, Route | None] = {}

    def _write(self, level: int, line: str) -> None:
        """Write one combined line: straight to the server's stream when that is all
        logging would do with it (about a third of the cost of a line), else through logging."""
        second = int(time.time())
        if second != self._routes_second:
            self._routes_second = second
            self._routes = {}
        try:
            route = self._routes[level]
        except KeyError:
            route = self._routes[level] = _direct_route(level)
        if route is None:
            _emit(level, "%s", (line,))
            return
        for handler, head, tail in route:
            handler.acquire()
            try:
                stream = handler.stream
                stream.write(head + line + tail)
                stream.flush()
            except Exception:
                handler.handleError(
                    logger.makeRecord(logger.name, level, __file__, _LOG_LINE, line, (), None)
                )
            finally:
                handler.release()

    def log(self, request: Exchange, status: int, nbytes: int) -> None:
        """Log one request; level INFO below 500, WARNING for 5xx."""
        if self.format == "off":
            return
        level = logging.WARNING if status >= 500 else logging.INFO
        if not logger.isEnabledFor(level):
            return
        latency_ms = (time.monotonic() - request.started) * 1000.0
        referer = request.header("referer", "-")
        agent = request.header("user-agent", "-")
        if self.format == "json":
            line = json.dumps(
                {
                    "time": time.time(),
                    "remote": request.client,
                    "method": request.method,
                    "path": request.target,
                    "version": request.version,
                    "status": status,
                    "bytes": nbytes,
                    "referer": referer,
                    "user_agent": agent,
                    "latency_ms": round(latency_ms, 3),
                    "port": self.port,
                }
            )
            _emit(level, "%s", (line,))
            return
        self._write(
            level,
            f'{request.client} - - [{_clf_time()}] "{request.method} {request.target} {request.version}" '
            f'{status} {nbytes} "{referer}" "{agent}" {latency_ms:.2f}ms port={self.port}',
        )


#: The line of :meth:`AccessLog.log`, named in every access record (see :func:`_emit`).
_LOG_LINE = AccessLog.log.__code__.co_firstlineno
