"""djpool seen from outside: a real server.py, real MariaDB, and what goes wrong in production.

Each test starts ``server.py`` as a subprocess on the pooled MySQL engine,
does to its database connection what a server, a network or a careless view
does (kill it, let it time out, stop the server, leave a transaction or a
lock behind, change session state), and checks what a user of the site would
see and what ``/-/health`` reports in ``db.default.pool``.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.support import MariaDB, MySQLServer, ServerProcess, wait_for

Start = Callable[..., ServerProcess]


# -- helpers -------------------------------------------------------------------


def pool(server: ServerProcess) -> dict[str, Any]:
    """The server's ``db.default.pool`` block of ``/-/health`` (the health check reuses the connection)."""
    return server.health()["db"]["default"]["pool"]  # type: ignore[no-any-return]


def connection_id(server: ServerProcess) -> int:
    """The server-side id of the connection the next request uses (one request)."""
    response = server.get("/test/connection-id")
    assert response.status_code == 200, response.text
    return int(response.json()["connection_id"])


def kill(mysql: MySQLServer, cid: int) -> None:
    """``KILL <cid>`` from another session, and wait until the session is gone."""
    mysql.query(f"KILL {cid}")
    wait_for(
        lambda: not mysql.query("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (cid,)),
        5,
        f"session {cid} to disappear",
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def count_notes(mysql: MySQLServer, db: str, text: str) -> int:
    """Committed notes with ``text``, as another session sees them."""
    return int(mysql.query("SELECT COUNT(*) FROM notes_note WHERE text = %s", (text,), db=db)[0][0])


def error_lines(log: str) -> list[str]:
    """Lines the server logged at ERROR (Tornado's ``[E ...]`` prefix)."""
    return [line for line in log.splitlines() if line.startswith("[E ")]


def djpool_info_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("[I ") and " djpool]" in line]


# -- a connection that dies between requests --------------------------------------


def test_a_connection_killed_between_requests_is_replaced_with_exactly_one_reconnect(
    start_server: Start, app_db: tuple[MySQLServer, str], app_db_url: str
) -> None:
    mysql, db = app_db
    server = start_server(app_db_url)
    old = connection_id(server)
    assert pool(server)["reconnects"] == 0

    kill(mysql, old)
    started = time.monotonic()
    response = server.get("/test/connection-id")
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    new = response.json()["connection_id"]
    assert new != old
    assert mysql.sessions_on(db) == [new]
    stats = pool(server)
    assert stats["reconnects"] == 1
    assert stats["connects"] == 2
    # Discards are counted by reason; a disconnect's reason carries the MySQL error code.
    assert list(stats["discards"].values()) == [1]
    assert re.fullmatch(r"disconnect (2006|2013)", next(iter(stats["discards"])))
    assert elapsed < 1.0, f"the reconnecting request took {elapsed:.3f}s"
    # Logged at INFO, with the MySQL error code, and nothing at ERROR.
    info = "\n".join(djpool_info_lines(server.log()))
    assert re.search(rf"discarded connection id {old} \(disconnect (2006|2013)", info), info
    assert re.search(rf"reconnected \(connection id {new}\) after: disconnect (2006|2013)", info), info
    assert error_lines(server.log()) == []


def test_a_connection_killed_between_requests_is_replaced_when_the_next_view_opens_a_transaction(
    start_server: Start, app_db: tuple[MySQLServer, str], app_db_url: str
) -> None:
    mysql, db = app_db
    server = start_server(app_db_url)
    kill(mysql, connection_id(server))
    text = unique("atomic-after-kill")

    # The view's first round trip is atomic()'s SET autocommit=0, not a query.
    response = server.get(f"/test/insert-then-sleep?s=0&text={text}")

    assert response.status_code == 200
    assert count_notes(mysql, db, text) == 2  # both inserts, once each
    assert pool(server)["reconnects"] == 1
    assert error_lines(server.log()) == []


def test_a_connection_idle_past_the_session_wait_timeout_is_replaced_before_use_without_errors(
    start_server: Start, app_db: tuple[MySQLServer, str], app_db_url: str
) -> None:
    init = "SET SESSION wait_timeout=2"
    url = f"{app_db_url}?init_command={quote(init)}"
    server = start_server(url)
    first = connection_id(server)
    # The server's own connection reports the 2 s timeout: init_command got through
    # dj-database-url's OPTIONS into the pooled connection.
    assert pool(server)["server_idle_timeout"] == 2.0

    time.sleep(3)
    response = server.get("/test/connection-id")

    assert response.status_code == 200
    assert response.json()["connection_id"] != first
    stats = pool(server)
    assert stats["discards"].get("idle_timeout") == 1
    assert stats["reconnects"] == 0  # replaced before use, not after a failure
    assert stats["ping_failures"] == 0
    assert error_lines(server.log()) == []


def test_dj_database_url_puts_init_command_into_the_pooled_options() -> None:
    from conf.settings import database_from_url

    config = database_from_url(
        "mysql://root@127.0.0.1:3306/x?init_command=" + quote("SET SESSION wait_timeout=2")
    )
    assert config["ENGINE"] == "djpool.backends.mysql"
    assert config["OPTIONS"] == {"init_command": "SET SESSION wait_timeout=2", "pool": True}
    assert config["CONN_MAX_AGE"] == 0


# -- the database server goes away ------------------------------------------------


def test_requests_fail_fast_while_mariadb_is_down_and_succeed_again_without_a_restart(
    start_server: Start, private_app_db: tuple[MariaDB, str, str]
) -> None:
    maria, db, url = private_app_db
    server = start_server(url)
    before = connection_id(server)
    timings: dict[str, float] = {}
    try:
        maria.stop()
        for path in ("/test/connection-id", "/api/notes/1", "/test/connection-id", "/-/health"):
            started = time.monotonic()
            response = server.get(path, timeout=10)
            timings[path] = time.monotonic() - started
            assert response.status_code in (500, 503), (path, response.status_code)
            assert timings[path] < 2.0, timings
        assert server.health()["status"] == "unavailable"
    finally:
        maria.start()

    started = time.monotonic()
    after = connection_id(server)
    recovery = time.monotonic() - started
    assert after != before
    assert server.get("/-/health").status_code == 200
    assert server.post("/api/notes", json={"text": "after the restart"}).status_code == 201
    assert maria.server.sessions_on(db) == [after]
    assert recovery < 2.0
    assert server.proc is not None and server.proc.poll() is None  # same process throughout


# -- what a view leaves behind does not reach the next request ------------------------


def test_an_uncommitted_insert_left_by_a_view_is_rolled_back_before_the_next_request(
    start_server: Start, app_db: tuple[MySQLServer, str], app_db_url: str
) -> None:
    mysql, db = app_db
    server = start_server(app_db_url)
    text = unique("uncommitted")
    response = server.get(f"/test/leave-transaction-open?text={text}")
    assert response.status_code == 200

    assert count_notes(mysql, db, text) == 0  # another session
    assert server.get(f"/test/note-count?text={text}").json()["count"] == 0  # the server's next request
    stats = pool(server)
    assert stats["connects"] == 1  # rolled back and reused, not thrown away
    assert stats["discarded"] == 0


def test_a_row_lock_left_by_a_view_is_released_before_the_next_request(
    start_server: Start, app_db: tuple[MySQLServer, str], app_db_url: str
) -> None:
    mysql, db = app_db
    server = start_server(app_db_url)
    note = server.post("/api/notes", json={"text": "to be locked"}).json()
    assert server.get(f"/test/lock-note/{note['id']}").json() == {"locked": note["id"]}

    observer = mysql.connect(db)
    try:
        cursor = observer.cursor()
        cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
        started = time.monotonic()
        cursor.execute(
            "UPDATE notes_note SET text = 'changed by another session' WHERE id = %s", (note["id"],)
        )
        cursor.execute("SELECT id FROM notes_note WHERE id = %s FOR UPDATE", (note["id"],))
        waited = time.monotonic() - started
    finally:
        observer.close()
    assert waited < 0.5
    assert server.get(f"/api/notes/{note['id']}").json()["text"] == "changed by another session"


def test_disabled_foreign_key_checks_discard_the_connection_and_the_next_request_has_them_on(
    start_server: Start, app_db_url: str
) -> None:
    server = start_server(app_db_url)
    before = connection_id(server)
    assert server.get("/test/fk-checks-off").status_code == 200

    after = server.get("/test/session-var").json()
    assert after["foreign_key_checks"] == 1
    assert after["connection_id"] != before
    assert pool(server)["discards"] == {"unknown session state": 1}
    assert "foreign key checks left disabled" in "\n".join(djpool_info_lines(server.log()))


def test_a_session_variable_set_with_raw_sql_is_not_seen_by_the_next_request(
    start_server: Start, app_db_url: str
) -> None:
    server = start_server(app_db_url)
    assert server.get("/test/session-var?set=leaked").json()["value"] == "leaked"

    assert server.get("/test/session-var").json()["value"] is None
    assert pool(server)["discards"] == {"unknown session state": 1}


# -- a transaction cut by a lost connection ---------------------------------------


def test_a_transaction_interrupted_by_a_killed_connection_is_rolled_back_and_not_replayed(
    start_server: Start, app_db: tuple[MySQLServer, str], app_db_url: str
) -> None:
    mysql, db = app_db
    server = start_server(app_db_url)
    cid = connection_id(server)
    text = unique("interrupted")
    result: dict[str, requests.Response] = {}

    def call() -> None:
        result["response"] = requests.get(server.url(f"/test/insert-then-sleep?s=2&text={text}"), timeout=20)

    thread = threading.Thread(target=call)
    thread.start()
    # Kill once the first insert is in (uncommitted: only a dirty read sees it), during the sleep.
    dirty = mysql.connect(db)
    try:
        cursor = dirty.cursor()
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")

        def first_insert_done() -> bool:
            cursor.execute("SELECT COUNT(*) FROM notes_note WHERE text = %s", (text,))
            return bool(cursor.fetchone()[0])

        wait_for(first_insert_done, 5, "the view's first insert")
    finally:
        dirty.close()
    kill(mysql, cid)
    thread.join(20)

    assert result["response"].status_code == 500
    assert count_notes(mysql, db, text) == 0
    assert server.get(f"/test/note-count?text={text}").json()["count"] == 0
    assert server.post("/api/notes", json={"text": "next request"}).status_code == 201
    stats = pool(server)
    assert stats["reconnects"] == 0  # nothing was retried
    assert [k for k in stats["discards"] if k.startswith("disconnect")], stats["discards"]
    assert stats["discarded"] == 1
    assert "lost inside a transaction" in server.log()


# -- steady state -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_10000_requests_use_one_server_side_connection_and_never_reconnect(
    start_server: Start, app_db: tuple[MySQLServer, str], app_db_url: str, mode: str
) -> None:
    mysql, db = app_db
    server = start_server(app_db_url, f"--django_mode={mode}")
    first = connection_id(server)
    session = requests.Session()
    url = server.url("/test/connection-id")
    started = time.monotonic()
    ids = set()
    for _ in range(10_000):
        response = session.get(url, timeout=10)
        assert response.status_code == 200
        ids.add(response.json()["connection_id"])
    elapsed = time.monotonic() - started
    session.close()

    assert ids == {first}
    assert mysql.sessions_on(db) == [first]
    stats = pool(server)
    assert stats["connects"] == 1
    assert stats["reconnects"] == 0
    assert stats["discarded"] == 0
    assert stats["reuses"] >= 10_000
    # Between requests the thread that runs Django holds its connection (docs/djpool.md):
    # idle, not in use.
    assert (stats["idle"], stats["in_use"], stats["held"]) == (1, 0, 1)
    print(f"10,000 requests in {elapsed:.1f}s ({10_000 / elapsed:.0f} req/s)")


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_handing_back_a_clean_connection_sends_no_rollback(
    start_server: Start, private_app_db: tuple[MariaDB, str, str], mode: str
) -> None:
    maria, _, url = private_app_db
    mysql = maria.server

    def rollbacks() -> int:
        return int(mysql.query("SHOW GLOBAL STATUS LIKE 'Com_rollback'")[0][1])

    server = start_server(url, f"--django_mode={mode}")
    note = server.post("/api/notes", json={"text": "read many times"}).json()
    start = rollbacks()
    for _ in range(100):
        assert server.get(f"/api/notes/{note['id']}").status_code == 200
        assert server.get("/test/connection-id").status_code == 200
    # This server is the only client of the tests' own MariaDB: the global
    # counter moves only for its statements.
    assert rollbacks() - start == 0

    # A connection handed back with a transaction open gets exactly one ROLLBACK.
    assert server.get("/test/leave-transaction-open?text=rolled-back").status_code == 200
    assert rollbacks() - start == 1


# -- configuration ------------------------------------------------------------------


def test_conn_max_age_with_the_pool_stops_server_startup_naming_the_setting(
    start_server: Start, app_db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "max_age_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        "DATABASES['default']['CONN_MAX_AGE'] = 60  # noqa: F405\n"
    )
    server = start_server(
        app_db_url, settings="max_age_settings", env={"PYTHONPATH": str(tmp_path)}, wait=False
    )
    assert server.proc is not None
    code = server.proc.wait(30)
    assert code == 1
    log = server.log()
    assert "database default is misconfigured" in log
    assert "DATABASES['default']['CONN_MAX_AGE'] is 60" in log
    assert "must be 0" in log
    assert "listening on" not in log


def test_a_killed_connection_found_by_the_health_check_is_reported_ok(
    start_server: Start, app_db: tuple[MySQLServer, str], app_db_url: str
) -> None:
    mysql, _ = app_db
    server = start_server(app_db_url)
    kill(mysql, connection_id(server))
    response = server.get("/-/health")
    assert response.status_code == 200
    assert response.json()["db"]["default"]["pool"]["reconnects"] == 1
