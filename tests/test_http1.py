"""HTTP/1.1 on the wire, for both implementations (``--http=httptools``, the default, and
``--http=tornado``): what a client sees byte for byte, where raw sockets are the only way to
send it (pipelining, chunked bodies, Expect, HTTP/1.0, smuggling-shaped heads, slow clients).
The default layer also runs them with ``--django_mode=thread`` (Django on a thread of its own;
the default is Django on the IOLoop thread).

Where the two differ, the test says what each one answers.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import PYTHON, ROOT, ServerProcess

MAX_BODY = 2000
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module", params=["httptools", "tornado", "httptools-thread"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # httptools-thread: the default layer with Django on a thread of its own (--django_mode=thread).
    layer, _, mode = request.param.partition("-")
    proc = ServerProcess(
        None,
        f"--http={layer}",
        *([f"--django_mode={mode}"] if mode else []),
        f"--max_body_size={MAX_BODY}",
        f"--body_timeout={BODY_TIMEOUT}",
        log_dir=tmp_path_factory.mktemp("http1"),
    )
    proc.impl = layer  # type: ignore[attr-defined]
    proc.start()
    yield proc
    proc.stop()


def impl(server: ServerProcess) -> str:
    return server.impl  # type: ignore[attr-defined,no-any-return]


class Wire:
    """A raw client connection that reads responses one at a time, keeping what follows."""

    def __init__(self, server: ServerProcess, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[str, dict[str, str], bytes]:
        """(status line, headers with lower-case names, body) of the next response."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise AssertionError(f"connection closed before a full response head: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                break
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection within ``timeout`` (nothing more arrives)."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def echoed(body: bytes) -> dict[str, Any]:
    return json.loads(body)  # type: ignore[no-any-return]


# -- the request reaches Django as sent ------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(server: ServerProcess) -> None:
    with Wire(server) as wire:
        wire.send(get("/test/echo?n=1") + post("/test/echo", b"second") + get("/test/echo?n=3"))
        answers = [wire.response() for _ in range(3)]
    assert [status for status, _, _ in answers] == ["HTTP/1.1 200 OK"] * 3
    assert [echoed(body)["method"] for _, _, body in answers] == ["GET", "POST", "GET"]
    assert echoed(answers[1][2])["body"] == "second"


def test_fifty_pipelined_requests_in_one_write_all_get_answers(server: ServerProcess) -> None:
    with Wire(server) as wire:
        wire.send(b"".join(post("/test/echo", f"request {i}".encode()) for i in range(50)))
        bodies = [echoed(wire.response()[2])["body"] for _ in range(50)]
    assert bodies == [f"request {i}" for i in range(50)]


def test_two_thousand_pipelined_requests_answered_on_the_loop_all_get_answers(server: ServerProcess) -> None:
    # Answered without Django (an unknown server endpoint: 404), so each answer is given
    # while the previous one is still being handled: no recursion, no lost answer.
    count = 2000
    with Wire(server) as wire:
        wire.send(get("/-/nothing") * count)
        statuses = [wire.response()[0] for _ in range(count)]
    assert statuses == ["HTTP/1.1 404 Not Found"] * count


def test_chunked_request_body_reaches_django_whole(server: ServerProcess) -> None:
    with Wire(server) as wire:
        wire.send(
            b"POST /test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
        )
        status, _, body = wire.response()
    assert status == "HTTP/1.1 200 OK"
    assert echoed(body)["body"] == "hello world"


def test_a_head_arriving_in_pieces_is_one_request(server: ServerProcess) -> None:
    request = post("/test/echo", b"pieces", "X-Note: slow client\r\n")
    with Wire(server) as wire:
        for start in range(0, len(request), 7):
            wire.send(request[start : start + 7])
            time.sleep(0.01)
        status, _, body = wire.response()
    assert status == "HTTP/1.1 200 OK"
    assert echoed(body)["body"] == "pieces"
    assert echoed(body)["headers"]["HTTP_X_NOTE"] == "slow client"


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: ServerProcess) -> None:
    with Wire(server) as wire:
        wire.send(
            b"POST /test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim, _, _ = wire.response()
        assert interim == (
            "HTTP/1.1 100 Continue" if impl(server) == "httptools" else "HTTP/1.1 100 (Continue)"
        )
        wire.send(b"later")
        status, _, body = wire.response()
    assert status == "HTTP/1.1 200 OK"
    assert echoed(body)["body"] == "later"


def test_header_names_with_underscores_never_reach_django(server: ServerProcess) -> None:
    # nginx drops them too: X_Forwarded_For would land in HTTP_X_FORWARDED_FOR.
    with Wire(server) as wire:
        wire.send(get("/test/echo", "X_Forwarded_For: 203.0.113.9\r\nX-Kept: yes\r\n"))
        _, _, body = wire.response()
    headers = echoed(body)["headers"]
    assert headers["HTTP_X_KEPT"] == "yes"
    assert "HTTP_X_FORWARDED_FOR" not in headers


# -- connection handling ----------------------------------------------------------------------


def test_http10_closes_after_the_response_unless_asked_to_keep_alive(server: ServerProcess) -> None:
    with Wire(server) as wire:
        wire.send(b"GET /test/echo HTTP/1.0\r\n\r\n")
        status, _, _ = wire.response()
        assert status == "HTTP/1.1 200 OK"
        assert wire.closed_by_server()
    with Wire(server) as wire:
        wire.send(b"GET /test/echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        _, headers, _ = wire.response()
        assert headers["connection"].lower() == "keep-alive"
        wire.send(b"GET /test/echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert wire.response()[0] == "HTTP/1.1 200 OK"


def test_connection_close_from_the_client_is_honoured(server: ServerProcess) -> None:
    with Wire(server) as wire:
        wire.send(get("/test/echo", "Connection: close\r\n"))
        status, headers, _ = wire.response()
        assert status == "HTTP/1.1 200 OK"
        assert wire.closed_by_server()
    if impl(server) == "httptools":
        assert headers["connection"] == "close"


def test_an_upgrade_request_gets_a_plain_http11_answer(server: ServerProcess) -> None:
    # curl --http2 on a plain-text URL asks this; the server does not switch protocols.
    with Wire(server) as wire:
        wire.send(
            get(
                "/test/echo",
                "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
            )
        )
        status, _, body = wire.response()
    assert status == "HTTP/1.1 200 OK"
    assert echoed(body)["method"] == "GET"


# -- bad input: a clear answer, and the server keeps serving -----------------------------------


def test_content_length_and_chunked_together_are_refused(server: ServerProcess) -> None:
    # The classic request-smuggling shape: a proxy and the server could disagree on the body.
    with Wire(server) as wire:
        wire.send(
            b"POST /test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        status, headers, _ = wire.response()
        assert status == "HTTP/1.1 400 Bad Request"
        assert headers["date"].endswith(" GMT")
        assert wire.closed_by_server()
    with Wire(server) as wire:
        wire.send(get("/test/echo"))
        assert wire.response()[0] == "HTTP/1.1 200 OK"


def test_malformed_head_gets_400_naming_the_problem(server: ServerProcess) -> None:
    with Wire(server) as wire:
        wire.send(b"GET /test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Line\r\n\r\n")
        status, _, body = wire.response()
        assert wire.closed_by_server()
    assert status == "HTTP/1.1 400 Bad Request"
    if impl(server) == "httptools":
        assert echoed(body)["error"] == "malformed request"
        assert echoed(body)["detail"]


def test_chunked_body_over_max_body_size(server: ServerProcess) -> None:
    chunk = b"x" * 1500
    with Wire(server) as wire:
        wire.send(b"POST /test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(2):
            wire.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        wire.send(b"0\r\n\r\n")
        status, headers, body = wire.response()
    if impl(server) == "httptools":
        assert status == "HTTP/1.1 413 Request Entity Too Large"
        assert echoed(body)["max_body_size"] == MAX_BODY
        assert headers["connection"] == "close"
    else:
        assert status == "HTTP/1.1 400 Bad Request"  # Tornado's own answer (documented)


def test_a_body_that_stops_arriving_is_cut_after_body_timeout(server: ServerProcess) -> None:
    with Wire(server) as wire:
        wire.send(b"POST /test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nonly ten..")
        started = time.monotonic()
        if impl(server) == "httptools":
            status, _, body = wire.response()
            assert status == "HTTP/1.1 408 Request Timeout"
            assert echoed(body)["body_timeout"] == BODY_TIMEOUT
        assert wire.closed_by_server(timeout=10)  # Tornado closes without an answer
        waited = time.monotonic() - started
    assert BODY_TIMEOUT * 0.8 < waited < BODY_TIMEOUT + 5


def test_a_whole_pipelined_body_behind_a_long_request_is_not_timed_out(server: ServerProcess) -> None:
    # The POST arrives whole at once; the request before it runs longer than
    # --body_timeout. Nothing is late: both are answered, in order.
    with Wire(server) as wire:
        wire.send(get(f"/test/slow?s={BODY_TIMEOUT * 2.5}") + post("/test/echo", b"waited"))
        first, second = wire.response(), wire.response()
    assert first[0] == "HTTP/1.1 200 OK"
    assert second[0] == "HTTP/1.1 200 OK"
    assert echoed(second[2])["body"] == "waited"


def test_a_pipelined_body_that_stops_arriving_is_cut_and_answered_after_the_request_before_it(
    server: ServerProcess,
) -> None:
    with Wire(server) as wire:
        wire.send(
            get(f"/test/slow?s={BODY_TIMEOUT * 2.5}")
            + b"POST /test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nonly ten.."
        )
        assert wire.response()[0] == "HTTP/1.1 200 OK"  # the slow one, first, whole
        if impl(server) == "httptools":
            status, _, body = wire.response()
            assert status == "HTTP/1.1 408 Request Timeout"
            assert echoed(body)["body_timeout"] == BODY_TIMEOUT
        assert wire.closed_by_server(timeout=10)  # Tornado closes without an answer


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"GET /test/echo HTTP/1.1\r\nBad Header Line\r\n\r\n", id="400-malformed"),
        pytest.param(post("/test/echo", b"x" * (MAX_BODY + 1)), id="413-too-large"),
    ],
)
def test_a_refused_request_behind_a_running_one_is_answered_after_it(
    server: ServerProcess, bad: bytes
) -> None:
    # The first request is still in Django when the second is refused: the client gets
    # the first answer, then the refusal, in the order it sent them, then the close.
    with Wire(server) as wire:
        wire.send(get("/test/slow?s=0.5") + post("/test/echo", b"second") + bad)
        first, second, third = wire.response(), wire.response(), wire.response()
        assert wire.closed_by_server()
    assert first[0] == "HTTP/1.1 200 OK"
    assert second[0] == "HTTP/1.1 200 OK"
    assert echoed(second[2])["body"] == "second"
    expected = "400 Bad Request" if bad.startswith(b"GET") else "413 Request Entity Too Large"
    assert third[0] == f"HTTP/1.1 {expected}"


def test_a_response_whose_length_lies_becomes_a_500(server: ServerProcess) -> None:
    if impl(server) == "tornado":
        pytest.skip("Tornado sends the head before it notices; the client sees a cut response")
    with Wire(server) as wire:
        wire.send(get("/test/wrong-length"))
        status, _, _ = wire.response()
        assert status == "HTTP/1.1 500 Internal Server Error"
        wire.send(get("/test/echo"))  # the connection is still in step
        assert wire.response()[0] == "HTTP/1.1 200 OK"
    assert "does not match the body" in server.log()


def test_an_unknown_http_implementation_is_a_clear_error() -> None:
    result = subprocess.run(
        [PYTHON, "server.py", "--http=h2"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--http='h2': must be httptools or tornado" in result.stderr
