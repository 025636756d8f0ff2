"""One worker in production conditions: signals, limits, overload, proxies, logs, systemd.

Every test starts the real ``server.py`` as a subprocess, sends real signals and
talks HTTP (or raw TCP where a client library would hide what the server does).
The ``--ports`` launcher has its own file, tests/test_launcher.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from appserver.worker import EXIT_UNFINISHED
from tests.support import PYTHON, ROOT, ServerProcess, free_port, wait_for

Start = Callable[..., ServerProcess]


# -- helpers ----------------------------------------------------------------------------


def fetch(url: str, timeout: float = 30, **kw: Any) -> requests.Response | Exception:
    """GET on a fresh connection; the exception instead of raising it (for client threads)."""
    try:
        return requests.get(url, timeout=timeout, **kw)
    except Exception as exc:
        return exc


def django_jobs(server: ServerProcess) -> int:
    """Requests queued for or running on the Django thread, as /-/health reports them."""
    return int(server.health()["django_thread"]["queued"])


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, dict[str, str], bytes]:
    """Read one HTTP response (status line, headers, Content-Length body) from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a full response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status.encode(), headers, body


def run_concurrently(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` for i in range(count), all at once; results in order."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def refused(port: int) -> bool:
    """True when nothing accepts connections on ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def exit_code(server: ServerProcess, timeout: float) -> int:
    assert server.proc is not None
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"server still running after {timeout}s:\n{server.log()}") from None


# -- draining on SIGTERM --------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_lets_50_in_flight_requests_finish_then_exits_0(start_server: Start) -> None:
    # --django_mode=thread: a 2 s request holds the Django thread, so all 50 slow
    # requests (0.1 s each) are surely read and queued when SIGTERM arrives, however
    # loaded the machine is. (Inline, they wait in the accept queue instead: see
    # test_sigterm_during_a_request_answers_the_connections_waiting_in_the_backlog.)
    server = start_server(None, "--django_mode=thread", "--max_queue=100", "--graceful_timeout=60")
    with ThreadPoolExecutor(max_workers=51) as pool:
        blocker = pool.submit(fetch, server.url("/test/slow?s=2"))
        wait_for(lambda: django_jobs(server) == 1, 10, "the blocking request to start")
        futures = [pool.submit(fetch, server.url("/test/slow?s=0.1")) for _ in range(50)]
        wait_for(lambda: django_jobs(server) == 51, 10, "50 requests queued behind it")
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        # Draining: the port no longer accepts new connections, the accepted ones go on.
        wait_for(lambda: refused(server.port), 5, "the listening socket to close")
        results = [f.result() for f in futures]
        assert blocker.result().status_code == 200  # type: ignore[union-attr]
    code = exit_code(server, 30)
    drained = time.monotonic() - signalled
    failures = [r for r in results if not isinstance(r, requests.Response) or r.status_code != 200]
    assert failures == []
    assert all(r.json() == {"slept": 0.1} for r in results)  # type: ignore[union-attr]
    assert code == 0
    assert "draining: SIGTERM" in server.log()
    assert "stopped cleanly" in server.log()
    print(f"drained 50 queued requests in {drained:.2f} s")


@pytest.mark.slow
@pytest.mark.parametrize("http", ["httptools", "tornado"])
def test_sigterm_during_a_request_answers_the_connections_waiting_in_the_backlog(
    start_server: Start, http: str
) -> None:
    # With Django on the IOLoop thread (the default) nothing accepts connections while a
    # request runs: new ones wait, complete, in the kernel's accept queue. SIGTERM then
    # must not close the listening socket over them (each would be reset): the worker
    # takes them over and answers them before it exits.
    server = start_server(None, "--graceful_timeout=60", f"--http={http}")
    request = b"GET /test/slow?s=0.05 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with ThreadPoolExecutor(max_workers=1) as pool:
        blocker = pool.submit(fetch, server.url("/test/slow?s=2"))
        time.sleep(0.5)  # the loop has read it and is inside Django now
        waiting = []
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(request)
            waiting.append(sock)
        assert not blocker.done(), "the blocking request ended before the 50 were queued"
        server.signal(signal.SIGTERM)
        answers = []
        for sock in waiting:
            with sock:
                try:
                    status, _, body = read_response(sock)
                    answers.append((status, json.loads(body)))
                except OSError as exc:
                    answers.append((repr(exc).encode(), None))
        assert blocker.result().status_code == 200  # type: ignore[union-attr]
    assert answers == [(b"HTTP/1.1 200 OK", {"slept": 0.05})] * 50
    assert exit_code(server, 30) == 0
    assert "stopped cleanly" in server.log()


def test_a_request_arriving_on_a_keep_alive_connection_during_the_drain_is_answered(
    start_server: Start,
) -> None:
    # A proxy's idle upstream connection may carry a request at the moment the worker starts
    # draining: it gets its answer, with Connection: close, and then the connection closes.
    server = start_server(None)
    request = b"GET /test/client HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200")
        server.signal(signal.SIGTERM)
        wait_for(lambda: "draining: SIGTERM" in server.log(), 5, "the drain to begin")
        sock.sendall(request)
        status, headers, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 200")
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""  # and the server does close it
    assert exit_code(server, 10) == 0


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_second_sigterm_exits_at_once_with_code_3_naming_the_unfinished_requests(
    start_server: Start, mode: str
) -> None:
    # thread: one request runs, two are read and queued. inline: one runs and the loop
    # is inside it, yet both signals are acted on at once (the others are not read).
    server = start_server(None, f"--django_mode={mode}", "--max_queue=100", "--graceful_timeout=60")
    paths = ["/test/slow?s=5", "/test/slow?s=6", "/test/slow?s=7"][: 3 if mode == "thread" else 1]
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(fetch, server.url(path)) for path in paths]
        if mode == "thread":
            wait_for(lambda: django_jobs(server) == 3, 10, "3 requests queued for Django")
        else:
            time.sleep(0.5)  # running: the loop read it at once (/-/health would wait for it)
        server.signal(signal.SIGTERM)
        wait_for(lambda: "draining: SIGTERM" in server.log(), 2, "the drain to begin")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = exit_code(server, 5)
        exited_after = time.monotonic() - started
        results = [f.result() for f in futures]
    assert code == EXIT_UNFINISHED == 3
    assert exited_after < 1.0
    assert all(isinstance(r, Exception) for r in results)  # cut off: their worker is gone
    log = server.log()
    assert f"second signal (SIGTERM): exiting with {len(paths)} unfinished request(s)" in log
    for path in paths:
        assert f"GET {path}" in log


@pytest.mark.parametrize(
    ("mode", "request_timeout"),
    # Inline, the loop is inside the request: a watcher thread ends the drain, also
    # when it has no stuck requests to watch for (--request_timeout=0).
    [("inline", "30"), ("inline", "0"), ("thread", "30")],
)
def test_graceful_timeout_expiry_exits_3_naming_the_unfinished_request(
    start_server: Start, mode: str, request_timeout: str
) -> None:
    server = start_server(
        None, "--graceful_timeout=0.5", f"--django_mode={mode}", f"--request_timeout={request_timeout}"
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(fetch, server.url("/test/slow?s=10"))
        if mode == "thread":
            wait_for(lambda: django_jobs(server) == 1, 10, "the slow request to run")
        else:
            time.sleep(0.5)  # /-/health would wait for the request: give the loop time to read it
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = exit_code(server, 5)
        waited = time.monotonic() - started
        assert isinstance(future.result(), Exception)
    assert code == EXIT_UNFINISHED
    assert 0.4 < waited < 2.0
    expected = "graceful timeout (0.5 s): exiting with 1 unfinished request(s): GET /test/slow?s=10"
    assert expected in server.log()


# -- overload, recycling, stuck requests ------------------------------------------------------


def test_full_queue_answers_503_with_retry_after_at_once(start_server: Start) -> None:
    # --django_mode=thread only: inline, nothing is read while a request runs (README).
    server = start_server(None, "--django_mode=thread", "--max_queue=2")

    def slow(_: int) -> tuple[int, float, requests.Response]:
        started = time.monotonic()
        r = requests.get(server.url("/test/slow?s=1.5"), timeout=30)
        return r.status_code, time.monotonic() - started, r

    results = run_concurrently(6, slow)
    served = [r for code, _, r in results if code == 200]
    refused = [(elapsed, r) for code, elapsed, r in results if code == 503]
    # One request runs, --max_queue=2 wait for the Django thread, the other three are refused.
    assert len(served) == 3, [code for code, _, _ in results]
    assert len(refused) == 3
    for elapsed, r in refused:
        assert elapsed < 0.4, f"the 503 took {elapsed:.2f}s: it waited instead of failing fast"
        assert r.headers["Retry-After"] == "1"
        assert "GMT" in r.headers["Date"]
        assert r.json()["error"] == "server busy: request queue full"
    assert server.get("/test/slow?s=0").status_code == 200  # the queue drained: serving again


def test_max_requests_standalone_exits_0_after_the_100th_request(start_server: Start) -> None:
    server = start_server(None, "--max_requests=100")
    session = requests.Session()
    responses = [session.get(server.url("/test/client"), timeout=10) for _ in range(100)]
    assert [r.status_code for r in responses] == [200] * 100
    assert responses[-1].headers["Connection"] == "close"  # the last one tells the client to go
    assert exit_code(server, 10) == 0
    log = server.log()
    assert "draining: served 100 requests (--max_requests)" in log
    assert "stopped cleanly" in log


def test_stuck_request_logs_the_django_stack_and_health_says_stuck_until_it_ends(start_server: Start) -> None:
    server = start_server(None, "--request_timeout=0.5")
    assert server.get("/-/health").status_code == 200
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(fetch, server.url("/test/slow?s=2"))

        def stuck() -> dict[str, Any] | None:
            r = requests.get(server.url("/-/health"), timeout=5)
            return r.json() if r.status_code == 503 else None

        body = wait_for(stuck, 2, "/-/health to report the stuck request")
        assert body["status"] == "stuck"
        assert "GET /test/slow?s=2 running for more than 0.5 s" in body["reason"]
        response = slow.result()
    assert isinstance(response, requests.Response) and response.status_code == 200
    wait_for(lambda: server.get("/-/health").status_code == 200, 2, "/-/health to be 200 again")
    log = server.log()
    assert "stuck request: GET /test/slow?s=2" in log
    stack = log.split("stuck request:", 1)[1]
    assert 'tests/testapp/views.py", line' in stack and "in slow" in stack
    assert "time.sleep(seconds)" in stack


# -- request limits --------------------------------------------------------------------------


def test_1500_urlencoded_fields_and_150_uploaded_files_reach_django(start_server: Start) -> None:
    # Tornado's own form parser refuses > 1,000 fields or >= 100 parts; Django's limits
    # are what count (tests/settings.py raises them to 2,000 fields and 200 files).
    server = start_server(None)
    fields = {f"field{i}": str(i) for i in range(1500)}
    response = server.post("/test/form", data=fields)
    assert response.status_code == 200, response.text
    assert response.json() == {"fields": 1500, "files": 0}

    files = [("upload", (f"f{i}.txt", f"file {i}".encode(), "text/plain")) for i in range(150)]
    response = server.post("/test/form", data={"note": "x"}, files=files)
    assert response.status_code == 200, response.text
    assert response.json() == {"fields": 1, "files": 150}


@pytest.mark.parametrize("size", [8 * 1024, 1024 * 1024])
def test_request_head_over_max_header_size_gets_431_and_the_connection_closes(
    start_server: Start, size: int
) -> None:
    server = start_server(None, "--max_header_size=4096")
    response = requests.get(server.url("/test/client"), headers={"X-Big": "a" * size}, timeout=10)
    assert response.status_code == 431
    assert response.reason == "Request Header Fields Too Large"
    assert response.headers["Connection"] == "close"
    assert "GMT" in response.headers["Date"]
    assert response.json()["max_header_size"] == 4096
    # A head just under the limit is fine, and the server keeps serving.
    assert server.get("/test/client", headers={"X-Big": "a" * 3000}).status_code == 200


def test_date_header_on_200_400_404_413_431_503_and_head(start_server: Start) -> None:
    server = start_server(
        None, "--django_mode=thread", "--max_body_size=100", "--max_header_size=4096", "--max_queue=1"
    )
    responses = {
        "200": server.get("/test/client"),
        "404": server.get("/no/such/page"),
        "413": requests.post(server.url("/test/form"), data=b"x" * 1000, timeout=10),
        "431": requests.get(server.url("/"), headers={"X-Big": "a" * 5000}, timeout=10),
        "HEAD": server.session.head(server.url("/test/client"), timeout=10),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        # Long enough that a loaded machine still sends the next request while both wait.
        busy = [pool.submit(fetch, server.url("/test/slow?s=2")) for _ in range(2)]
        wait_for(lambda: django_jobs(server) == 2, 5, "one request running, one waiting")
        responses["503"] = server.get("/test/client")
        assert [f.result().status_code for f in busy] == [200, 200]  # type: ignore[union-attr]
    for label, response in responses.items():
        assert label == "HEAD" or response.status_code == int(label)
        assert response.headers["Date"].endswith(" GMT"), label
    # Tornado's own answer to a request it cannot parse
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        status, headers, _ = read_response(sock)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert headers["date"].endswith(" GMT")


def test_head_answers_headers_of_the_get_without_a_body(start_server: Start) -> None:
    server = start_server(None)
    get = server.get("/test/client")
    head = server.session.head(server.url("/test/client"), timeout=10)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.content))
    assert head.headers["Content-Type"] == "application/json"
    assert server.get("/test/client").status_code == 200  # the connection is still in sync


def test_a_client_sending_its_body_slowly_does_not_hold_the_django_thread(start_server: Start) -> None:
    server = start_server(None)
    body = b"&".join(b"f%d=%d" % (i, i) for i in range(200))
    head = (
        b"POST /test/form HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(head + body[:100])
        time.sleep(0.2)
        started = time.monotonic()
        meanwhile = server.get("/test/slow?s=0", timeout=5)
        elapsed = time.monotonic() - started
        assert meanwhile.status_code == 200
        assert elapsed < 1.0, f"another request waited {elapsed:.2f}s behind a slow upload"
        slow.sendall(body[100:])
        status, _, answer = read_response(slow)
    assert status.startswith(b"HTTP/1.1 200")
    assert json.loads(answer) == {"fields": 200, "files": 0}


def test_idle_keep_alive_connection_is_closed_after_idle_connection_timeout(start_server: Start) -> None:
    server = start_server(None, "--idle_connection_timeout=0.5")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /test/client HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 200")
        assert headers.get("connection", "").lower() != "close"
        idle_since = time.monotonic()
        assert sock.recv(1) == b""  # the server closed it
        idle = time.monotonic() - idle_since
    assert 0.4 < idle < 3.0, f"closed after {idle:.2f}s"


# -- proxies and internal endpoints -----------------------------------------------------------


def test_xheaders_from_a_trusted_proxy_set_the_client_address_and_scheme(start_server: Start) -> None:
    server = start_server(None, "--xheaders")  # default --trusted_proxies: loopback
    forwarded = server.get(
        "/test/client", headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.1", "X-Forwarded-Proto": "https"}
    ).json()
    assert forwarded == {"remote_addr": "203.0.113.7", "is_secure": True}
    real_ip = server.get("/test/client", headers={"X-Real-IP": "198.51.100.2"}).json()
    assert real_ip == {"remote_addr": "198.51.100.2", "is_secure": False}
    assert server.get("/test/client").json() == {"remote_addr": "127.0.0.1", "is_secure": False}
    # The access log names the real client too.
    assert "203.0.113.7 - - [" in server.log()


def test_xheaders_from_an_untrusted_peer_are_ignored(start_server: Start) -> None:
    server = start_server(None, "--xheaders", "--trusted_proxies=10.0.0.0/8")  # loopback not trusted
    spoofed = server.get(
        "/test/client",
        headers={"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.8", "X-Forwarded-Proto": "https"},
    ).json()
    assert spoofed == {"remote_addr": "127.0.0.1", "is_secure": False}


def test_internal_endpoints_are_403_outside_internal_allow_and_cannot_be_spoofed(start_server: Start) -> None:
    server = start_server(None, "--internal_allow=10.0.0.0/8", "--xheaders", "--trusted_proxies=10.0.0.0/8")
    for path in ("/-/health", "/-/metrics"):
        response = server.get(path)
        assert response.status_code == 403
        assert response.json()["error"] == "server endpoints are not open to this address"
    assert server.get("/-/health", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 403
    assert server.get("/test/client").status_code == 200  # the application itself is open

    default = start_server(None)
    assert default.get("/-/health").status_code == 200


# -- metrics and logs -----------------------------------------------------------------------------


def _metric_samples(text: str) -> dict[str, list[Any]]:
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        samples[family.name] = list(family.samples)
    return samples


def test_metrics_parse_and_count_requests_by_method_and_status_class(
    start_server: Start, app_db_url: str
) -> None:
    server = start_server(app_db_url, "--max_body_size=1000")
    session = requests.Session()
    for _ in range(4):
        assert session.get(server.url("/test/client"), timeout=10).status_code == 200
    for _ in range(2):
        assert session.get(server.url("/no/such/page"), timeout=10).status_code == 404
    assert session.get(server.url("/test/raise"), timeout=10).status_code == 500
    for _ in range(3):
        assert session.post(server.url("/test/form"), data={"a": "1"}, timeout=10).status_code == 200
    assert requests.post(server.url("/test/form"), data=b"x" * 5000, timeout=10).status_code == 413
    assert session.head(server.url("/test/client"), timeout=10).status_code == 200
    assert session.get(server.url("/-/health"), timeout=10).status_code == 200

    response = session.get(server.url("/-/metrics"), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = _metric_samples(response.text)
    counts = {
        (s.labels["method"], s.labels["status"]): s.value
        for s in samples["appserver_requests"]
        if s.name == "appserver_requests_total"
    }
    assert counts == {
        ("GET", "2xx"): 5,  # 4 views + /-/health (this scrape is counted after it is sent)
        ("GET", "4xx"): 2,
        ("GET", "5xx"): 1,
        ("POST", "2xx"): 3,
        ("POST", "4xx"): 1,
        ("HEAD", "2xx"): 1,
    }
    latency_count = next(
        s.value
        for s in samples["appserver_request_duration_seconds"]
        if s.name == "appserver_request_duration_seconds_count"
    )
    assert latency_count == 13
    # djpool's counters, for the MySQL connection the worker holds
    for name in ("djpool_connects", "djpool_checkouts", "djpool_reuses", "djpool_reconnects"):
        assert name in samples, sorted(samples)
    connects = {
        s.labels["alias"]: s.value for s in samples["djpool_connects"] if s.name == "djpool_connects_total"
    }
    assert connects["default"] >= 1
    assert "djpool_idle" in samples and "djpool_in_use" in samples and "djpool_held" in samples
    # The next scrape counts the previous one.
    again = _metric_samples(session.get(server.url("/-/metrics"), timeout=10).text)
    get_2xx = next(
        s.value
        for s in again["appserver_requests"]
        if s.name == "appserver_requests_total" and s.labels == {"method": "GET", "status": "2xx"}
    )
    assert get_2xx == 6


def test_json_log_format_makes_every_line_a_json_object_with_the_port(start_server: Start) -> None:
    server = start_server(None, "--log_format=json")
    server.get("/test/client?probe=json")
    server.get("/no/such/page")
    server.get("/test/raise")  # a logged traceback must be JSON too
    assert server.stop() == 0
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert len(lines) >= 5
    entries = []
    for line in lines:
        entry = json.loads(line)  # fails on any non-JSON line
        assert isinstance(entry, dict), line
        assert entry["port"] == server.port, line
        entries.append(entry)
    access = [e["access"] for e in entries if "access" in e]
    probe = next(a for a in access if a["path"] == "/test/client?probe=json")
    assert probe["method"] == "GET" and probe["status"] == 200
    assert isinstance(probe["latency_ms"], float)
    assert {a["status"] for a in access} >= {200, 404, 500}
    texts = [e.get("exception", "") + e.get("message", "") for e in entries]
    assert any("a bug in a view, on purpose" in text for text in texts)


# -- systemd ----------------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket standing in for systemd's notify socket (short path: 108-byte limit)."""
    directory = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def _messages_until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    """Datagrams received until one has the line ``wanted``; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    received: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        received.append(message)
        if wanted in message.splitlines():
            return received
    raise AssertionError(f"no {wanted} within {timeout}s; received {received!r}")


def test_sd_notify_ready_then_stopping_on_sigterm(
    start_server: Start, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    server = start_server(None, env={"NOTIFY_SOCKET": path})
    ready = _messages_until(sock, "READY=1", 10)[-1]
    assert f"MAINPID={server.proc.pid}" in ready.splitlines()  # type: ignore[union-attr]
    server.signal(signal.SIGTERM)
    stopping = _messages_until(sock, "STOPPING=1", 5)[-1]
    assert "STATUS=draining: SIGTERM" in stopping.splitlines()
    assert exit_code(server, 10) == 0


def test_sd_notify_watchdog_pings_repeatedly(
    start_server: Start, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    start_server(None, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    _messages_until(sock, "READY=1", 10)
    started = time.monotonic()
    pings = 0
    while pings < 4:
        _messages_until(sock, "WATCHDOG=1", 1)
        pings += 1
    # WATCHDOG_USEC=200000: a ping every 0.1 s (half the timeout)
    assert time.monotonic() - started < 1.0


def test_socket_activation_serves_on_the_passed_socket(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    # What systemd does: the socket as fd 3, LISTEN_FDS=1 and LISTEN_PID = the service's pid.
    wrapper = (
        "import os, sys; fd = int(sys.argv[1]);"
        "fd != 3 and (os.dup2(fd, 3), os.close(fd));"
        "os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_PID'] = str(os.getpid());"
        "os.execv(sys.executable, [sys.executable, 'server.py', *sys.argv[2:]])"
    )
    other_port = free_port()  # --port is ignored when a socket is passed
    log = open(tmp_path / "activated.log", "wb")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LISTEN_FDS", "LISTEN_PID")}
    proc = subprocess.Popen(
        [PYTHON, "-c", wrapper, str(listener.fileno()), f"--port={other_port}", "--settings=tests.settings"],
        cwd=ROOT,
        env=env,
        pass_fds=(listener.fileno(),),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    listener.close()  # only the server holds it now
    try:
        response = wait_for(
            lambda: requests.get(f"http://127.0.0.1:{port}/-/health", timeout=2), 15, "the activated server"
        )
        assert response.status_code == 200
        assert response.json()["pid"] == proc.pid
        assert response.json()["port"] == port
        assert requests.get(f"http://127.0.0.1:{port}/test/client", timeout=5).status_code == 200
        assert refused(other_port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    text = (tmp_path / "activated.log").read_text()
    assert f"listening on http://127.0.0.1:{port}/" in text


# -- --django_mode=inline: Django on the IOLoop thread ----------------------------------------


def test_inline_mode_serves_the_api_on_one_held_connection(start_server: Start, app_db_url: str) -> None:
    server = start_server(app_db_url, "--django_mode=inline")
    note = server.post("/api/notes", json={"text": "inline"}).json()
    for _ in range(200):
        r = server.get(f"/api/notes/{note['id']}")
        assert r.status_code == 200 and r.json()["text"] == "inline"
    assert server.get("/test/raise").status_code == 500  # a view's bug stays a 500 ...
    assert server.get(f"/api/notes/{note['id']}").status_code == 200  # ... and the next one works
    body = server.health()
    stats = body["db"]["default"]["pool"]
    assert (stats["connects"], stats["reconnects"], stats["held"]) == (1, 0, 1)
    assert stats["reuses"] >= 200
    assert body["django_thread"] == {"busy": False, "queued": 0}


def test_inline_mode_health_waits_for_the_running_request(start_server: Start) -> None:
    # The price of inline mode, as a monitor sees it: /-/health is answered only
    # once the running request is done (thread mode answers at once, see test_server).
    server = start_server(None, "--django_mode=inline")
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(fetch, server.url("/test/slow?s=2"))
        time.sleep(0.5)  # the request is running (nothing reports it while the loop is in Django)
        started = time.monotonic()
        health = requests.get(server.url("/-/health"), timeout=10)
        waited = time.monotonic() - started
        assert slow.result().status_code == 200  # type: ignore[union-attr]
    assert health.status_code == 200
    assert waited > 1.0, f"health answered in {waited:.2f}s while a 2 s request ran on the loop"


def test_inline_mode_stuck_request_is_logged_with_its_stack(start_server: Start) -> None:
    server = start_server(None, "--django_mode=inline", "--request_timeout=0.5")
    response = requests.get(server.url("/test/slow?s=2"), timeout=10)
    assert response.status_code == 200
    log = server.log()
    assert "stuck request: GET /test/slow?s=2 running for more than 0.5 s" in log
    stack = log.split("stuck request:", 1)[1]
    assert 'tests/testapp/views.py", line' in stack and "time.sleep(seconds)" in stack
    # Over once it ended: the next health check (answered now that the loop is free) is 200.
    wait_for(lambda: server.get("/-/health").status_code == 200, 3, "/-/health to be 200")


def test_inline_mode_sigterm_during_a_request_finishes_it_then_exits_0(start_server: Start) -> None:
    server = start_server(None, "--django_mode=inline", "--graceful_timeout=30")
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(fetch, server.url("/test/slow?s=1.5"))
        time.sleep(0.5)
        server.signal(signal.SIGTERM)
        # Acted on in the middle of the request, though the loop is inside it.
        wait_for(lambda: "draining: SIGTERM" in server.log(), 0.8, "the drain to begin mid-request")
        assert not slow.done()
        response = slow.result()
    assert isinstance(response, requests.Response) and response.status_code == 200
    assert response.headers["Connection"] == "close"  # the client is told to go elsewhere
    assert exit_code(server, 20) == 0
    assert "stopped cleanly" in server.log()


def test_inline_mode_feeds_the_systemd_watchdog_while_a_request_runs(
    start_server: Start, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    server = start_server(
        None, "--django_mode=inline", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    )
    _messages_until(sock, "READY=1", 10)
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(fetch, server.url("/test/slow?s=2"))
        time.sleep(0.5)  # well inside the request: the loop is in Django now
        started = time.monotonic()
        for _ in range(4):  # one ping per 0.2 s is expected; a stalled loop would send none
            _messages_until(sock, "WATCHDOG=1", 1)
        assert not slow.done(), "the request ended before the pings were counted"
        assert time.monotonic() - started < 1.5
        assert slow.result().status_code == 200  # type: ignore[union-attr]


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_inline_mode_keeps_django_state_per_thread_not_per_client_connection(
    start_server: Start, app_db: tuple[Any, str], app_db_url: str, event_loop: str
) -> None:
    # Django keeps its connections in contextvars; on the loop thread every client
    # connection's callbacks run in a context of their own. The stock backend with
    # CONN_MAX_AGE=None must still see one persistent connection, as on a thread.
    mysql, name = app_db
    before = len(mysql.sessions_on(name))
    server = start_server(
        app_db_url,
        "--django_mode=inline",
        f"--event_loop={event_loop}",
        env={"DATABASE_POOL": "0", "DATABASE_CONN_MAX_AGE": "none"},
    )
    note = server.post("/api/notes", json={"text": "stock"}).json()
    for _ in range(10):  # each on a client connection of its own
        r = requests.get(server.url(f"/api/notes/{note['id']}"), timeout=10)
        assert r.status_code == 200 and r.json()["text"] == "stock"
        assert server.get("/-/health").status_code == 200  # its database check runs in a task
    assert len(mysql.sessions_on(name)) - before == 1


def test_thread_mode_settings_given_to_an_inline_worker_are_named_as_without_effect(
    start_server: Start,
) -> None:
    inline = start_server(None, "--max_queue=5", "--health_timeout=1")
    thread = start_server(None, "--django_mode=thread", "--max_queue=5")
    assert inline.get("/test/client").status_code == 200
    assert thread.get("/test/client").status_code == 200
    for name, value in (("max_queue", "5"), ("health_timeout", "1.0")):
        assert f"--{name}={value} has no effect with Django on the IOLoop thread" in inline.log()
    assert "has no effect" not in thread.log()
