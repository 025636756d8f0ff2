"""The access log writes the line logging would write, and goes through logging whenever
a user's set-up could see or change the record."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import pytest

from appserver.accesslog import AccessLog, PortFormatter, _emit, logger

FMT = "%(color)s[%(levelname)1.1s %(asctime)s :8001 %(name)s]%(end_color)s %(message)s"


class Request:
    """What AccessLog.log reads of an answered request."""

    client = "192.0.2.7"
    method = "GET"
    target = "/api/notes/1?x=1"
    version = "HTTP/1.1"

    def __init__(self) -> None:
        self.started = time.monotonic()

    def header(self, name: str, default: str = "") -> str:
        return {"user-agent": "curl/8", "referer": "http://example.test/"}.get(name, default)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger as a worker has it: one stream handler with the port formatter."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logger.handlers[:], logger.filters[:], logger.disabled)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(PortFormatter(fmt=FMT, color=False))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.handlers[:], _, logger.handlers[:], logger.filters[:], logger.disabled = saved
        root.setLevel(saved[1])


def same_second() -> None:
    """Wait out the end of a second, so that two lines written now share their time stamp."""
    while time.time() % 1 > 0.9:
        time.sleep(0.02)


def test_a_direct_line_is_exactly_the_line_logging_writes(stream: io.StringIO) -> None:
    access = AccessLog("combined", 8001)
    for level in (logging.INFO, logging.WARNING):
        same_second()
        access._write(level, 'x - - [t] "GET / HTTP/1.1" 200 5 "-" "-" 1.00ms port=8001')
        _emit(level, "%s", ('x - - [t] "GET / HTTP/1.1" 200 5 "-" "-" 1.00ms port=8001',))
        direct, through_logging = stream.getvalue().splitlines()
        assert direct == through_logging
        assert direct.startswith("[I " if level == logging.INFO else "[W ")
        stream.seek(0)
        stream.truncate()


def test_an_access_line_names_request_status_bytes_agent_latency_and_port(stream: io.StringIO) -> None:
    AccessLog("combined", 8001).log(Request(), 201, 42)  # type: ignore[arg-type]
    line = stream.getvalue()
    assert line.endswith("port=8001\n")
    assert "192.0.2.7 - - [" in line
    assert '"GET /api/notes/1?x=1 HTTP/1.1" 201 42 "http://example.test/" "curl/8" ' in line
    assert line.startswith("[I ") and " :8001 appserver.access] " in line


def test_a_filter_on_the_access_logger_sees_every_record(stream: io.StringIO) -> None:
    seen: list[str] = []

    def keep_all_but_health(record: logging.LogRecord) -> bool:
        seen.append(record.getMessage())
        return "/-/health" not in record.getMessage()

    logger.addFilter(keep_all_but_health)
    access = AccessLog("combined", 8001)
    access.log(Request(), 200, 1)  # type: ignore[arg-type]
    health = Request()
    health.target = "/-/health"
    access.log(health, 200, 1)  # type: ignore[arg-type]
    assert len(seen) == 2
    assert "/api/notes/1" in stream.getvalue()
    assert "/-/health" not in stream.getvalue()  # the user's filter dropped it


def test_a_handler_of_the_user_s_gets_the_records_and_the_stream_still_gets_the_line(
    stream: io.StringIO,
) -> None:
    records: list[logging.LogRecord] = []
    mine = logging.Handler()
    mine.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(mine)
    AccessLog("combined", 8001).log(Request(), 200, 1)  # type: ignore[arg-type]
    assert len(records) == 1
    assert records[0].name == "appserver.access"
    assert records[0].process is not None  # a full record, made by logging
    assert "/api/notes/1" in stream.getvalue()


def test_a_disabled_access_logger_writes_nothing(stream: io.StringIO) -> None:
    logger.disabled = True  # what a dictConfig with disable_existing_loggers does
    AccessLog("combined", 8001).log(Request(), 200, 1)  # type: ignore[arg-type]
    assert stream.getvalue() == ""


def test_a_change_of_handlers_takes_effect_within_a_second(stream: io.StringIO) -> None:
    access = AccessLog("combined", 8001)
    access.log(Request(), 200, 1)  # type: ignore[arg-type]
    other = io.StringIO()
    handler = logging.StreamHandler(other)
    handler.setFormatter(PortFormatter(fmt=FMT, color=False))
    logging.getLogger().handlers[:] = [handler]
    deadline = time.monotonic() + 3
    while not other.getvalue() and time.monotonic() < deadline:
        access.log(Request(), 200, 1)  # type: ignore[arg-type]
        time.sleep(0.05)
    assert "/api/notes/1" in other.getvalue()
