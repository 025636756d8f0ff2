"""In-process checks of the IOLoop-side fast paths: response headers and the Django hand-off."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from appserver.djangothread import DjangoThread
from appserver.http import is_ip_address, response_headers


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


@pytest.mark.parametrize(
    "header",
    [
        ("X-Bad", "one\r\nInjected: yes"),
        ("X-Bad", "one\nInjected: yes"),
        ("X-Bad", "nul\x00"),
        ("Bad Name", "value"),
        ("Bad:Name", "value"),
        ("", "value"),
        ("X-Bad\r\nInjected", "value"),
    ],
)
def test_response_headers_refuse_what_could_split_the_response(header: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        response_headers([("Content-Type", "text/plain"), header])


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
