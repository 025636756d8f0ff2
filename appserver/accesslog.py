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


class AccessLog:
    """Formats and emits access log lines for one worker."""

    def __init__(self, fmt: str, port: int) -> None:
        self.format = fmt
        self.port = port

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
        _emit(
            level,
            '%s - - [%s] "%s %s %s" %d %d "%s" "%s" %.2fms port=%d',
            (
                request.client,
                _clf_time(),
                request.method,
                request.target,
                request.version,
                status,
                nbytes,
                referer,
                agent,
                latency_ms,
                self.port,
            ),
        )


#: The line of :meth:`AccessLog.log`, named in every access record (see :func:`_emit`).
_LOG_LINE = AccessLog.log.__code__.co_firstlineno
