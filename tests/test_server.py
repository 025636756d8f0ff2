"""server.py hosting Django: persistence, the demo app, bad input, errors, health.

Every test starts the real ``server.py`` as a subprocess and talks HTTP to it.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.support import PYTHON, ROOT, MariaDB, MySQLServer, ServerProcess, free_port, wait_for

Start = Callable[..., ServerProcess]


def raw_http(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers before closing or timing out."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks):
                    # keep-alive response: stop once the body (Content-Length) is in
                    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:") and len(body) >= int(
                            line.split(b":")[1]
                        ):
                            return b"".join(chunks)
        except TimeoutError:
            pass
        return b"".join(chunks)


# -- persistence against real MariaDB ---------------------------------------------


def test_1000_requests_use_one_server_side_connection(
    start_server: Start, private_app_db: tuple[MariaDB, str, str]
) -> None:
    # The tests' own MariaDB: its global Connections counter sees only this test.
    own, db, url = private_app_db
    mysql = own.server
    server = start_server(url)
    note = server.post("/api/notes", json={"text": "persistent"}).json()
    before = server.health()["db"]["default"]["connection_id"]
    connections_before = mysql.connections_counter()

    for _ in range(1000):
        r = server.get(f"/api/notes/{note['id']}")
        assert r.status_code == 200
        assert r.json()["text"] == "persistent"

    connections_after = mysql.connections_counter()
    after = server.health()["db"]["default"]["connection_id"]
    assert after == before
    # The only session on the test database is the server's, and it is the same one.
    assert mysql.sessions_on(db) == [before]
    # No new connection was made by the server during the 1,000 requests
    # (each observer query above is itself one connection: two of them).
    assert connections_after - connections_before <= 2
    stats = server.health()["db"]["default"]["pool"]
    assert stats["connects"] == 1
    assert stats["reconnects"] == 0
    assert stats["reuses"] >= 1000


def test_health_reports_the_real_connection_id(
    start_server: Start, app_db: tuple[MySQLServer, str], app_db_url: str
) -> None:
    mysql, db = app_db
    server = start_server(app_db_url)
    response = server.get("/-/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["port"] == server.port
    assert body["pid"] == server.proc.pid  # type: ignore[union-attr]
    cid = body["db"]["default"]["connection_id"]
    assert server.get("/test/connection-id").json()["connection_id"] == cid
    assert cid in mysql.sessions_on(db)


def test_health_is_503_when_the_database_is_unreachable(start_server: Start) -> None:
    dead_port = free_port()  # nothing listens there
    server = start_server(f"mysql://root@127.0.0.1:{dead_port}/nothing")
    started = time.monotonic()
    response = server.get("/-/health")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "Can't connect" in body["reason"] or "2002" in body["reason"] or "2003" in body["reason"]
    # The server keeps running and says the same next time.
    assert server.get("/-/health").status_code == 503
    assert "not reachable" in server.log()


def test_health_answers_while_django_is_busy(start_server: Start, app_db_url: str) -> None:
    # --django_mode=thread: the IOLoop stays free while Django works (inline: see
    # test_inline_mode_health_waits_for_the_running_request in test_production).
    server = start_server(app_db_url, "--django_mode=thread")
    assert server.get("/-/health").status_code == 200
    slow = threading.Thread(target=lambda: requests.get(server.url("/test/slow?s=3"), timeout=10))
    slow.start()
    time.sleep(0.5)
    started = time.monotonic()
    response = requests.get(server.url("/-/health"), timeout=10)
    elapsed = time.monotonic() - started
    slow.join()
    assert response.status_code == 200
    body = response.json()
    assert body["django_thread"]["busy"] is True
    assert "busy" in body["db_checked"]
    assert elapsed < 1.5, f"health waited behind the slow request ({elapsed:.2f}s)"


# -- the demo app on SQLite (no DATABASE_URL) ---------------------------------------


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo with its default SQLite database, in a temporary copy of var/."""
    env = {"DJANGO_DEBUG": "0"}
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        check=True,
        env={**__import__("os").environ, **env, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    server = ServerProcess(None, env=env, log_dir=tmp_path_factory.mktemp("sqlite"))
    server.start()
    yield server
    assert server.stop() == 0


def test_sqlite_default_serves_the_page_and_the_api(sqlite_server: ServerProcess) -> None:
    page = sqlite_server.get("/")
    assert page.status_code == 200
    assert "<h1>Notes</h1>" in page.text
    assert "csrfmiddlewaretoken" in page.text
    created = sqlite_server.post("/api/notes", json={"text": "from sqlite"})
    assert created.status_code == 201
    note_id = created.json()["id"]
    fetched = sqlite_server.get(f"/api/notes/{note_id}")
    assert fetched.status_code == 200
    assert fetched.json()["text"] == "from sqlite"
    assert "from sqlite" in sqlite_server.get("/").text
    assert sqlite_server.health()["db"]["default"]["vendor"] == "sqlite"


def test_html_form_requires_csrf_and_adds_a_note(sqlite_server: ServerProcess) -> None:
    no_token = requests.post(sqlite_server.url("/"), data={"text": "x"}, timeout=10)
    assert no_token.status_code == 403
    session = requests.Session()
    page = session.get(sqlite_server.url("/"), timeout=10)
    token = page.text.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    added = session.post(
        sqlite_server.url("/"),
        data={"text": "via the form", "csrfmiddlewaretoken": token},
        headers={"Referer": sqlite_server.url("/")},
        timeout=10,
    )
    assert added.status_code == 200  # after the redirect
    assert "via the form" in added.text


def test_missing_note_is_404_json(sqlite_server: ServerProcess) -> None:
    response = sqlite_server.get("/api/notes/999999999")
    assert response.status_code == 404
    assert response.json() == {"error": "note not found", "id": 999999999}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b'["a list"]', "JSON object"),
        (b"{}", "missing field: text"),
        (b'{"text": ""}', "must not be empty"),
        (b'{"text": 42}', "must be a string"),
        (('{"text": "' + "x" * 281 + '"}').encode(), "longer than 280"),
    ],
)
def test_bad_note_bodies_get_400_naming_the_problem(
    sqlite_server: ServerProcess, body: bytes, problem: str
) -> None:
    response = sqlite_server.post("/api/notes", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert problem in response.json()["error"]
    assert sqlite_server.get("/api/notes/1").status_code in (200, 404)  # still serving


def test_head_has_headers_but_no_body(sqlite_server: ServerProcess) -> None:
    response = sqlite_server.session.head(sqlite_server.url("/"), timeout=10)
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["Content-Length"]) > 0
    assert "Date" in response.headers


def test_every_response_has_a_date_header(sqlite_server: ServerProcess) -> None:
    for path in ("/", "/api/notes/1", "/-/health", "/nowhere"):
        assert "GMT" in sqlite_server.get(path).headers["Date"]


def test_admin_login_page_is_served(sqlite_server: ServerProcess) -> None:
    response = sqlite_server.get("/admin/login/")
    assert response.status_code == 200
    assert "Django administration" in response.text


# -- bad input and errors ------------------------------------------------------------------


def test_malformed_request_line_gets_400_and_the_server_keeps_serving(sqlite_server: ServerProcess) -> None:
    answer = raw_http(sqlite_server.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert sqlite_server.get("/api/notes/1").status_code in (200, 404)


def test_body_over_max_body_size_gets_413_without_being_read(start_server: Start) -> None:
    server = start_server(None, "--max_body_size=1000")
    response = requests.post(server.url("/api/notes"), data=b"x" * 5000, timeout=10)
    assert response.status_code == 413
    assert response.json()["max_body_size"] == 1000
    # Announced but never sent: the answer comes at once, before any body byte.
    answer = raw_http(server.port, b"POST /api/notes HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413")
    assert server.post("/api/notes", json={"text": "small"}).status_code == 201


def test_a_view_that_raises_gives_500_and_the_next_request_works(sqlite_server: ServerProcess) -> None:
    response = sqlite_server.get("/test/raise")
    assert response.status_code == 500
    assert sqlite_server.get("/api/notes/1").status_code in (200, 404)
    assert "a bug in a view, on purpose" in sqlite_server.log()


def test_an_exception_escaping_the_wsgi_app_gives_500_not_a_hang(sqlite_server: ServerProcess) -> None:
    response = sqlite_server.get("/test/wsgi-crash", timeout=5)
    assert response.status_code == 500
    assert sqlite_server.get("/api/notes/1").status_code in (200, 404)
    assert "crash outside Django, on purpose" in sqlite_server.log()


def test_access_log_has_method_path_status_bytes_latency_and_client(sqlite_server: ServerProcess) -> None:
    sqlite_server.get("/api/notes/424242?probe=1")
    # The line is written just after the response is sent: the client can be faster.
    line = wait_for(
        lambda: next(
            (line for line in sqlite_server.log().splitlines() if "/api/notes/424242?probe=1" in line), None
        ),
        5,
        "the access log line",
    )
    assert line.split("appserver.access]")[1].split()[0] == "127.0.0.1"
    assert '"GET /api/notes/424242?probe=1 HTTP/1.1" 404 ' in line
    assert "ms port=" in line


# -- command line ------------------------------------------------------------------------


def test_help_lists_every_flag_with_its_default() -> None:
    result = subprocess.run(
        [PYTHON, "server.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    text = result.stdout + result.stderr
    for flag in (
        "--port",
        "--address",
        "--settings",
        "--xheaders",
        "--max_body_size",
        "--config",
        "--logging",
    ):
        assert flag.replace("_", "-") in text  # tornado prints --max-body-size; both spellings work
    assert "default 8001" in text


def test_a_bad_flag_value_is_a_clear_error() -> None:
    result = subprocess.run(
        [PYTHON, "server.py", "--port=70000"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--port=70000: must be a TCP port" in result.stderr


def test_an_unknown_django_mode_is_a_clear_error() -> None:
    result = subprocess.run(
        [PYTHON, "server.py", "--django_mode=threads"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--django_mode='threads': must be inline or thread" in result.stderr


def test_config_file_sets_options_and_rejects_unknown_names(tmp_path: Any) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("port = 8123\nmax_body_sise = 10\n")
    result = subprocess.run(
        [PYTHON, "server.py", f"--config={bad}"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "unknown setting(s): max_body_sise" in result.stderr


def test_config_file_values_are_used(start_server: Start, tmp_path: Any) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("max_body_size = 100\n")
    server = start_server(None, f"--config={conf}")
    assert requests.post(server.url("/api/notes"), data=b"x" * 200, timeout=10).status_code == 413


def test_a_taken_port_fails_fast_with_a_clear_message(start_server: Start) -> None:
    first = start_server(None)
    result = subprocess.run(
        [PYTHON, "server.py", f"--port={first.port}"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in result.stderr


def test_sigterm_exits_zero(start_server: Start) -> None:
    server = start_server(None)
    assert server.get("/-/health").status_code == 200
    assert server.stop() == 0
    assert "stopped cleanly" in server.log()
