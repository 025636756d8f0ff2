"""In-process checks of the IOLoop-side fast paths: response headers and the Django hand-off."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from appserver.djangothread import DjangoThread, InlineDjango
from appserver.http import encode_response, is_ip_address, response_headers


def test_response_headers_keep_order_and_repeated_headers() -> None:
    headers = response_headers(
        [("Content-Type", "text/html "), ("set-cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Empty", "")]
    )
    assert list(headers.get_all()) == [
        ("Content-Type", "text/html"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Empty", ""),
    ]


def test_response_headers_take_a_bytes_value_as_before() -> None:
    assert response_headers([("X-Bytes", b"caf\xc3\xa9")])["X-Bytes"] == "caf\u00e9"  # type: ignore[list-item]


BAD_HEADERS = [
    ("X-Bad", "one\r\nInjected: yes"),
    ("X-Bad", "one\nInjected: yes"),
    ("X-Bad", "nul\x00"),
    ("Bad Name", "value"),
    ("Bad:Name", "value"),
    ("", "value"),
    ("X-Bad\r\nInjected", "value"),
]


@pytest.mark.parametrize("header", BAD_HEADERS)
def test_response_headers_refuse_what_could_split_the_response(header: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        response_headers([("Content-Type", "text/plain"), header])


@pytest.mark.parametrize("header", BAD_HEADERS)
def test_encode_response_refuses_what_could_split_the_response_too(header: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        encode_response((200, "OK", [("Content-Type", "text/plain"), header], b""), False, "HTTP/1.1", False)


def test_results_finished_together_are_delivered_in_order() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        django = DjangoThread(loop)
        gate = threading.Event()
        got: list[Any] = []
        done = loop.create_future()

        def deliver(result: Any, error: BaseException | None) -> None:
            got.append((result, error, django.pending))
            if len(got) == 20:
                done.set_result(None)

        django.call(gate.wait, lambda r, e: None)
        for i in range(20):
            django.call(lambda i=i: i, deliver)
        gate.set()
        time.sleep(0.05)  # the Django thread finishes all of them while the loop is blocked
        await asyncio.wait_for(done, 5)
        django.stop()
        assert django.join(5)
        return got

    got = asyncio.run(main())
    assert [r for r, _, _ in got] == list(range(20))
    assert all(e is None for _, e, _ in got)
    assert [p for _, _, p in got] == list(range(19, -1, -1))


def test_a_failing_callback_does_not_hold_back_the_other_results() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, _context: None)
        django = DjangoThread(loop)
        gate = threading.Event()
        got: list[Any] = []
        done = loop.create_future()

        def fail(result: Any, error: BaseException | None) -> None:
            raise RuntimeError("callback bug")

        def deliver(result: Any, error: BaseException | None) -> None:
            got.append(result)
            done.set_result(None)

        django.call(gate.wait, lambda r, e: None)
        django.call(lambda: 1, fail)
        django.call(lambda: 2, deliver)
        gate.set()
        time.sleep(0.05)
        await asyncio.wait_for(done, 5)
        django.stop()
        assert django.join(5)
        return got

    assert asyncio.run(main()) == [2]


@pytest.mark.parametrize(
    ("text", "valid"),
    [("10.0.0.1", True), ("::1", True), ("fe80::1", True), ("unknown", False), ("", False), ("1.2.3", False)],
)
def test_is_ip_address_answers_the_same_when_asked_again(text: str, valid: bool) -> None:
    assert is_ip_address(text) is valid
    assert is_ip_address(text) is valid


def split(data: bytes) -> tuple[list[str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1").split("\r\n"), body


def test_encode_response_adds_date_and_length_and_keeps_repeated_headers() -> None:
    data, code, sent, close = encode_response(
        (201, "Created", [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], b"hello"), False, "HTTP/1.1", False
    )
    lines, body = split(data)
    assert lines[0] == "HTTP/1.1 201 Created"
    assert lines[1:3] == ["Set-Cookie: a=1", "Set-Cookie: b=2"]
    assert lines[3].startswith("Date: ") and lines[3].endswith(" GMT")
    assert lines[4] == "Content-Length: 5"
    assert (body, code, sent, close) == (b"hello", 201, 5, False)


def test_encode_response_head_keeps_the_length_and_sends_no_body() -> None:
    data, _, sent, _ = encode_response((200, "OK", [("Content-Length", "5")], b""), True, "HTTP/1.1", False)
    lines, body = split(data)
    assert "Content-Length: 5" in lines
    assert (body, sent) == (b"", 0)


def test_encode_response_sends_no_length_or_body_for_204_and_304() -> None:
    for code in (204, 304):
        data, _, sent, _ = encode_response((code, "", [], b"ignored"), False, "HTTP/1.1", False)
        lines, body = split(data)
        assert not any(line.startswith("Content-Length") for line in lines)
        assert (body, sent) == (b"", 0)


def test_encode_response_connection_header_decides_with_the_server() -> None:
    # The application asks to close: honoured, and said once.
    data, _, _, close = encode_response((200, "OK", [("Connection", "close")], b""), False, "HTTP/1.1", False)
    assert close and split(data)[0].count("Connection: close") == 1
    # An HTTP/1.0 client kept alive is told so.
    data, _, _, close = encode_response((200, "OK", [], b""), False, "HTTP/1.0", False)
    assert not close and "Connection: keep-alive" in split(data)[0]


def test_encode_response_refuses_a_length_that_does_not_match_the_body() -> None:
    with pytest.raises(ValueError, match="does not match the body"):
        encode_response((200, "OK", [("Content-Length", "100")], b"short"), False, "HTTP/1.1", False)


def test_inline_runs_django_on_the_loop_thread_with_the_loop_hidden_then_restored() -> None:
    from django.utils.asyncio import async_unsafe

    @async_unsafe
    def database_work() -> tuple[int, bool]:
        # What Django's backends check before touching a connection.
        return threading.get_ident(), asyncio.events._get_running_loop() is None

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        django = InlineDjango(loop)
        got: list[Any] = []
        django.call(database_work, lambda r, e: got.append((r, e, django.pending, django.busy_since)))
        django.call(lambda: 1 / 0, lambda r, e: got.append((r, type(e), django.pending)))
        got.append(asyncio.get_running_loop() is loop)  # the loop is visible again
        got.append(await django.submit(lambda: "internal job"))
        got.append((django.pending, django.internal, django.ident == threading.get_ident()))
        return got

    got = asyncio.run(main())
    (ident, hidden), error, pending, busy = got[0]
    assert ident == threading.get_ident() and hidden and error is None
    assert (pending, busy) == (0, None)  # finished before done() is called
    assert got[1] == (None, ZeroDivisionError, 0)
    assert got[2:] == [True, "internal job", (0, 0, True)]
