"""djpool driven directly: the pool and its options in-process, the engine in a Django subprocess.

Nothing is mocked. Pool tests use :class:`djpool.pool.Pool` with the real
:class:`~djpool.backends.mysql.driver.MySQLDriver` against a real MariaDB;
engine tests run a short script in a fresh Python process that configures
Django with ``settings.configure()`` and plays "requests" by sending Django's
``request_started``/``request_finished`` signals, as a WSGI host does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import MySQLdb
import pytest
from django.core.exceptions import ImproperlyConfigured

import djpool
from djpool.backends.mysql.driver import DISCONNECT_CODES, MySQLDriver, neutralise
from djpool.options import OPTION_DOCS, parse_pool_options
from djpool.pool import COUNTERS, Pool, PoolOptions
from tests.support import PYTHON, ROOT, MariaDB, MySQLServer, wait_for

# -- helpers -----------------------------------------------------------------------


def make_pool(server: MySQLServer, **options: Any) -> Pool[Any]:
    """A pool of real mysqlclient connections to ``server`` (autocommit on, like Django's)."""
    driver = MySQLDriver(lambda: server.connect(), autocommit=True)
    return Pool("unit", driver, PoolOptions(**options))


@pytest.fixture
def pools(mysql: MySQLServer) -> Iterator[Any]:
    """Make pools against the shared server; all are closed after the test."""
    made: list[Pool[Any]] = []

    def make(server: MySQLServer | None = None, **options: Any) -> Pool[Any]:
        pool = make_pool(server or mysql, **options)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def server_id(conn: Any) -> int:
    cursor = conn.cursor()
    cursor.execute("SELECT CONNECTION_ID()")
    return int(cursor.fetchone()[0])


def kill(mysql: MySQLServer, cid: int) -> None:
    mysql.query(f"KILL {cid}")
    wait_for(
        lambda: not mysql.query("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (cid,)),
        5,
        f"session {cid} to disappear",
    )


def global_status(server: MySQLServer, name: str) -> int:
    return int(server.query("SHOW GLOBAL STATUS LIKE %s", (name,))[0][1])


# A Django process of its own: settings.configure() with the database given as JSON.
PRELUDE = '''
import json, logging, os, sys, time
import django
from django.conf import settings
settings.configure(DATABASES={"default": json.loads(os.environ["DJPOOL_TEST_DB"])}, USE_TZ=True)
django.setup()
if os.environ.get("DJPOOL_HOLD") == "1":
    # As server.py's Django thread does: connections stay with this thread between requests.
    from djpool.pool import hold_on_this_thread
    hold_on_this_thread()
import MySQLdb
from django.core.signals import request_finished, request_started
from django.db import connection, transaction
import djpool
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
DB = json.loads(os.environ["DJPOOL_TEST_DB"])

def request(fn):
    """One request as a WSGI host runs it: request_started, the view, request_finished."""
    request_started.send(sender=None)
    try:
        return fn()
    finally:
        request_finished.send(sender=None)

def query(sql, args=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchall()

def conn_id():
    return query("SELECT CONNECTION_ID()")[0][0]

def kill(cid):
    """KILL from a session of its own, like a DBA or a proxy would."""
    other = MySQLdb.connect(host=DB["HOST"], port=int(DB["PORT"]), user=DB["USER"], passwd=DB["PASSWORD"])
    other.cursor().execute(f"KILL {cid}")
    other.close()
    time.sleep(0.1)

def emit(value):
    print("RESULT " + json.dumps(value), flush=True)
'''


@pytest.fixture(params=[False, True], ids=["checkin", "hold"])
def hold(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Engine tests run twice: connections handed back to the pool after every request,
    and held by the one thread between requests (djpool.pool.hold_on_this_thread, which
    server.py uses). What a request sees must not differ."""
    monkeypatch.setenv("DJPOOL_HOLD", "1" if request.param else "0")
    return bool(request.param)


def database(server: MySQLServer, name: str = "", pool: Any = True, **extra: Any) -> dict[str, Any]:
    """A ``DATABASES`` entry for the djpool engine on ``server``."""
    options = {"pool": pool, **extra.pop("OPTIONS", {})}
    return {
        "ENGINE": "djpool.backends.mysql",
        "NAME": name,
        "HOST": server.host,
        "PORT": str(server.port),
        "USER": server.user,
        "PASSWORD": server.password,
        "OPTIONS": options,
        **extra,
    }


def run_django(code: str, db: dict[str, Any], expect_ok: bool = True) -> tuple[Any, str]:
    """Run ``code`` after PRELUDE in a new process; return (what it emit()ted, its stderr)."""
    result = subprocess.run(
        [PYTHON, "-c", PRELUDE + textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, "DJPOOL_TEST_DB": json.dumps(db)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if expect_ok:
        assert result.returncode == 0, result.stdout + result.stderr
    emitted = [line[len("RESULT ") :] for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    return (json.loads(emitted[-1]) if emitted else None), result.stderr


# -- options --------------------------------------------------------------------------


def test_pool_true_means_the_documented_defaults() -> None:
    options = parse_pool_options(True, {"CONN_MAX_AGE": 0}, "default")
    assert options == PoolOptions(size=1, max_overflow=0, timeout=10.0, ping_after=5.0)
    assert options.max_lifetime is None and options.max_idle is None


def test_every_pool_option_has_one_line_of_documentation() -> None:
    assert set(OPTION_DOCS) == {f.name for f in fields(PoolOptions)}


def test_an_unknown_pool_option_is_refused_naming_it_and_the_known_ones() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        parse_pool_options({"sise": 2}, {}, "default")
    message = str(info.value)
    assert "'sise'" in message
    assert "DATABASES['default']['OPTIONS']['pool']" in message
    assert "known keys: max_idle, max_lifetime, max_overflow, ping_after, size, timeout" in message


@pytest.mark.parametrize(
    ("raw", "key", "wanted"),
    [
        ({"size": "2"}, "size", "a whole number"),
        ({"size": 2.0}, "size", "a whole number"),
        ({"size": True}, "size", "a whole number"),
        ({"size": 0}, "size", ">= 1"),
        ({"max_overflow": -1}, "max_overflow", ">= 0"),
        ({"max_overflow": None}, "max_overflow", "a whole number"),
        ({"timeout": "10"}, "timeout", "a number of seconds"),
        ({"timeout": -1}, "timeout", ">= 0"),
        ({"ping_after": [5]}, "ping_after", "a number of seconds"),
        ({"max_lifetime": "1h"}, "max_lifetime", "a number of seconds or None"),
        ({"max_lifetime": 0}, "max_lifetime", ">= 1"),
        ({"max_idle": False}, "max_idle", "a number of seconds or None"),
    ],
)
def test_a_pool_option_of_the_wrong_type_or_range_is_refused_naming_the_key(
    raw: dict[str, Any], key: str, wanted: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        parse_pool_options(raw, {}, "default")
    assert f"OPTIONS['pool']['{key}'] must be" in str(info.value)
    assert wanted in str(info.value)


def test_a_pool_option_that_is_neither_true_nor_a_dict_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"\['pool'\] must be True, False or a dict, got 'yes'"):
        parse_pool_options("yes", {}, "default")


def test_ping_after_must_be_below_max_idle() -> None:
    expected = r"'ping_after'\] \(30\) must be below \['max_idle'\] \(20\)"
    with pytest.raises(ImproperlyConfigured, match=expected):
        parse_pool_options({"ping_after": 30, "max_idle": 20}, {}, "default")


@pytest.mark.parametrize("max_age", [60, None])
def test_conn_max_age_other_than_zero_is_refused_with_the_pool(max_age: int | None) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        parse_pool_options(True, {"CONN_MAX_AGE": max_age}, "replica")
    message = str(info.value)
    assert f"DATABASES['replica']['CONN_MAX_AGE'] is {max_age!r}" in message
    assert "must be 0" in message


def test_conn_health_checks_means_ping_on_every_checkout(pools: Any, mysql: MySQLServer) -> None:
    options = parse_pool_options({"ping_after": 30}, {"CONN_HEALTH_CHECKS": True}, "default")
    assert options.ping_after == 0
    pool = pools(ping_after=options.ping_after)
    for _ in range(5):
        pool.checkin(pool.checkout())
    stats = pool.stats()
    assert stats["checkouts"] == 5
    assert stats["connects"] == 1
    assert stats["pings"] == 4  # every checkout of an existing connection


def test_a_misconfigured_pool_is_refused_at_the_first_database_use(mysql: MySQLServer) -> None:
    result, _ = run_django(
        """
        from django.core.exceptions import ImproperlyConfigured
        try:
            request(conn_id)
        except ImproperlyConfigured as exc:
            emit(str(exc))
        """,
        database(mysql, pool={"size": 1, "ping_afer": 3}),
    )
    assert "unknown key(s) 'ping_afer'" in result


# -- checkout, hand-back, limits ------------------------------------------------------


def test_an_exhausted_pool_makes_the_next_checkout_fail_after_timeout_naming_the_limits(pools: Any) -> None:
    pool = pools(size=1, max_overflow=0, timeout=0.5)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        conn = pool.checkout()
        held.set()
        release.wait(10)
        pool.checkin(conn)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    outcome: dict[str, Any] = {}

    def second() -> None:
        started = time.monotonic()
        try:
            pool.checkout()
        except djpool.PoolTimeout as exc:
            outcome["error"] = exc
        outcome["waited"] = time.monotonic() - started

    other = threading.Thread(target=second)
    other.start()
    other.join(10)
    release.set()
    thread.join(10)

    assert isinstance(outcome["error"], djpool.PoolTimeout)
    assert 0.45 <= outcome["waited"] < 1.2
    message = str(outcome["error"])
    assert "size=1" in message and "max_overflow=0" in message
    assert "0.5 s" in message
    stats = pool.stats()
    assert (stats["waits"], stats["timeouts"]) == (1, 1)
    # The holder's connection came back and is usable again.
    pool.checkin(pool.checkout())


def test_a_waiting_checkout_gets_the_connection_as_soon_as_it_is_handed_back(pools: Any) -> None:
    pool = pools(size=1, timeout=5)
    conn = pool.checkout()
    threading.Timer(0.2, pool.checkin, [conn]).start()
    started = time.monotonic()
    again = pool.checkout()
    assert again is conn
    assert time.monotonic() - started < 1.0
    assert pool.stats()["waits"] == 1 and pool.stats()["timeouts"] == 0
    pool.checkin(again)


def test_overflow_connections_are_opened_under_contention_and_closed_when_handed_back(
    pools: Any, mysql: MySQLServer
) -> None:
    pool = pools(size=1, max_overflow=1, timeout=0.2)
    first, second = pool.checkout(), pool.checkout()
    assert server_id(first) != server_id(second)
    with pytest.raises(djpool.PoolTimeout):
        pool.checkout()
    pool.checkin(first)
    pool.checkin(second)
    stats = pool.stats()
    assert (stats["idle"], stats["in_use"]) == (1, 0)
    assert stats["discards"] == {"overflow": 1}


def test_handing_back_a_clean_autocommit_connection_sends_no_rollback(private_mariadb: MariaDB) -> None:
    server = private_mariadb.server
    pool = make_pool(server)
    try:
        conn = pool.checkout()
        pool.checkin(conn)
        before = global_status(server, "Com_rollback")
        for _ in range(50):
            conn = pool.checkout()
            server_id(conn)
            pool.checkin(conn)
        assert global_status(server, "Com_rollback") - before == 0

        # Autocommit turned off by the user (what atomic() does): one ROLLBACK, autocommit back on.
        conn = pool.checkout()
        conn.autocommit(False)
        server_id(conn)
        pool.checkin(conn)
        assert global_status(server, "Com_rollback") - before == 1
        assert pool.checkout().get_autocommit() is True
    finally:
        pool.close()


def test_max_lifetime_retires_a_connection_by_age_however_busy(pools: Any) -> None:
    pool = pools(max_lifetime=1)
    conn = pool.checkout()
    first = server_id(conn)
    pool.checkin(conn)
    time.sleep(1.1)
    conn = pool.checkout()
    assert server_id(conn) != first
    pool.checkin(conn)
    assert pool.stats()["discards"] == {"max_lifetime": 1}
    assert pool.stats()["reconnects"] == 0


def test_a_connection_idle_past_ping_after_is_pinged_and_replaced_when_dead(
    pools: Any, mysql: MySQLServer, caplog: pytest.LogCaptureFixture
) -> None:
    pool = pools(ping_after=0.2)
    conn = pool.checkout()
    first = server_id(conn)
    pool.checkin(conn)
    kill(mysql, first)
    time.sleep(0.2)

    with caplog.at_level(logging.INFO, logger="djpool"):
        conn = pool.checkout()
    assert server_id(conn) != first
    pool.checkin(conn)
    stats = pool.stats()
    assert (stats["pings"], stats["ping_failures"], stats["reconnects"]) == (1, 1, 1)
    assert stats["discards"] == {"ping failed": 1}
    # Both the discard and the reconnect are logged at INFO, with the MySQL error code.
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    discarded = rf"discarded connection id {first} \(ping failed: \((2006|2013)"
    reconnected = r"reconnected \(connection id \d+\) after: ping failed: \((2006|2013)"
    assert any(re.search(discarded, m) for m in infos), infos
    assert any(re.search(reconnected, m) for m in infos), infos


def test_stats_report_every_counter_and_gauge_and_discards_by_reason(pools: Any) -> None:
    pool = pools(size=1, max_overflow=1)
    a, b = pool.checkout(), pool.checkout()
    stats = pool.stats()
    assert set(COUNTERS) == {
        "connects",
        "reuses",
        "checkouts",
        "pings",
        "ping_failures",
        "reconnects",
        "discarded",
        "waits",
        "timeouts",
    }
    assert set(stats) == {
        *COUNTERS,
        "size",
        "max_overflow",
        "idle",
        "in_use",
        "held",
        "connection_ids",
        "server_idle_timeout",
        "oldest_age",
        "discards",
    }
    assert (stats["in_use"], stats["idle"], stats["connects"], stats["checkouts"]) == (2, 0, 2, 2)
    assert sorted(stats["connection_ids"]) == sorted([server_id(a), server_id(b)])
    assert stats["server_idle_timeout"] == float(pool.driver.server_idle_timeout(a))
    pool.checkin(a)
    pool.checkin(b)
    stats = pool.stats()
    assert (stats["in_use"], stats["idle"], stats["discarded"]) == (0, 1, 1)
    assert stats["discards"] == {"overflow": 1}


def test_djpool_stats_reports_each_alias_of_this_process(mysql: MySQLServer) -> None:
    result, _ = run_django(
        """
        request(conn_id)
        request(conn_id)
        emit(djpool.stats())
        """,
        database(mysql),
    )
    assert list(result) == ["default"]
    stats = result["default"]
    assert (stats["connects"], stats["reuses"], stats["checkouts"]) == (1, 1, 2)
    assert (stats["idle"], stats["in_use"]) == (1, 0)


# -- the engine: disconnects, retries, idleness -----------------------------------------


def test_with_conn_health_checks_a_killed_connection_is_found_by_the_checkout_ping(
    mysql: MySQLServer,
    hold: bool,
) -> None:
    result, _ = run_django(
        """
        first = request(conn_id)
        kill(first)
        second = request(conn_id)
        emit({"first": first, "second": second, "stats": djpool.stats()["default"]})
        """,
        database(mysql, CONN_HEALTH_CHECKS=True),
    )
    assert result["first"] != result["second"]
    stats = result["stats"]
    assert (stats["pings"], stats["ping_failures"], stats["reconnects"]) == (1, 1, 1)
    assert stats["discards"] == {"ping failed": 1}


def test_a_killed_connection_is_replaced_when_the_next_request_starts_with_a_transaction(
    mysql: MySQLServer,
    hold: bool,
) -> None:
    result, log = run_django(
        """
        first = request(conn_id)
        kill(first)

        def atomic_view():
            with transaction.atomic():
                return conn_id()

        second = request(atomic_view)
        emit({"first": first, "second": second, "stats": djpool.stats()["default"]})
        """,
        database(mysql),
    )
    assert result["second"] != result["first"]
    assert result["stats"]["reconnects"] == 1
    assert re.search(r"reconnected \(connection id \d+\) after: disconnect (2006|2013)", log), log


def test_idle_time_is_counted_from_the_last_statement_not_from_the_hand_back(
    mysql: MySQLServer, hold: bool
) -> None:
    # The server's idle clock starts at the last statement. A request that holds the
    # connection for 1.5 s after it and then hands it back leaves a session that the
    # server (wait_timeout=2) closes 0.5 s later; 0.8 s after the hand-back the pool
    # must already count it as idle for 2.3 s and replace it before use.
    result, _ = run_django(
        """
        def slow_view():
            cid = conn_id()
            time.sleep(1.5)  # no statement: e.g. calling a remote API
            return cid

        first = request(slow_view)
        time.sleep(0.8)
        second = request(conn_id)
        emit({"first": first, "second": second, "stats": djpool.stats()["default"]})
        """,
        database(mysql, OPTIONS={"init_command": "SET SESSION wait_timeout=2"}),
    )
    stats = result["stats"]
    assert result["second"] != result["first"]
    assert stats["server_idle_timeout"] == 2.0
    assert stats["discards"] == {"idle_timeout": 1}
    assert stats["reconnects"] == 0


@pytest.mark.parametrize(
    ("statement", "what"),
    [
        ("SELECT @leak := 1", "a user variable assigned in a SELECT"),
        ("SELECT 1 INTO @leak", "a user variable assigned with SELECT ... INTO"),
        ("SELECT GET_LOCK('djpool-unit', 0)", "a named lock"),
    ],
)
def test_session_state_changed_without_set_is_not_handed_to_the_next_request(
    mysql: MySQLServer, hold: bool, statement: str, what: str
) -> None:
    result, _ = run_django(
        f"""
        first = request(lambda: (query({statement!r}), conn_id())[1])
        second = request(lambda: query("SELECT @leak, IS_USED_LOCK('djpool-unit'), CONNECTION_ID()")[0])
        emit({{"first": first, "second": list(second), "stats": djpool.stats()["default"]}})
        """,
        database(mysql),
    )
    leak, lock_holder, second_id = result["second"]
    assert leak is None, what
    assert lock_holder is None, what
    assert second_id != result["first"]
    assert result["stats"]["discards"] == {"unknown session state": 1}


def test_a_set_run_by_a_connection_created_receiver_keeps_the_connection_reused(
    mysql: MySQLServer, hold: bool
) -> None:
    # Django sends connection_created at every checkout; a receiver that sets up the
    # session is the application's baseline, not a change to throw the connection away for.
    result, _ = run_django(
        """
        from django.db.backends.signals import connection_created

        def utc_session(sender, connection, **kwargs):
            with connection.cursor() as cursor:
                cursor.execute("SET time_zone = '+00:00'")

        connection_created.connect(utc_session)
        seen = [request(lambda: query("SELECT CONNECTION_ID(), @@session.time_zone")[0]) for _ in range(5)]
        emit({"seen": seen, "stats": djpool.stats()["default"]})
        """,
        database(mysql),
    )
    assert {tuple(row) for row in result["seen"]} == {(result["seen"][0][0], "+00:00")}
    assert result["stats"]["connects"] == 1
    assert result["stats"]["discards"] == {}


def test_a_held_connection_is_cleaned_and_checked_like_a_checked_in_one(mysql: MySQLServer) -> None:
    # hold_on_this_thread(): the connection stays with the thread between requests, but
    # each request still starts clean (an open transaction is rolled back), the counters
    # still count a checkout per request, and health reports it idle between requests.
    table = f"held_{os.getpid()}"
    mysql.query(f"CREATE TABLE IF NOT EXISTS test.{table} (id INT PRIMARY KEY)")
    try:
        result, _ = run_django(
            f"""
            from djpool.pool import hold_on_this_thread
            hold_on_this_thread()
            from django.db.backends.signals import connection_created
            created = []
            connection_created.connect(lambda sender, connection, **kw: created.append(1), weak=False)

            def leave_open():
                query("BEGIN")
                query("INSERT INTO test.{table} VALUES (1)")
                return conn_id()

            first = request(leave_open)
            between = djpool.stats()["default"]
            rows = request(lambda: query("SELECT COUNT(*) FROM test.{table}")[0][0])
            ids = {{request(conn_id) for _ in range(20)}}
            emit({{"first": first, "ids": sorted(ids), "rows": rows, "created": len(created),
                   "between": [between["idle"], between["in_use"]], "stats": djpool.stats()["default"]}})
            """,
            database(mysql),
        )
    finally:
        mysql.query(f"DROP TABLE IF EXISTS test.{table}")
    assert result["rows"] == 0  # the transaction left open was rolled back, not committed
    assert result["ids"] == [result["first"]]  # and the same session served every request
    assert result["created"] == 1
    assert result["between"] == [1, 0]
    stats = result["stats"]
    assert (stats["connects"], stats["checkouts"], stats["discarded"]) == (1, 22, 0)


# -- fork safety ------------------------------------------------------------------------


def test_a_forked_child_opens_its_own_connection_and_the_parents_keeps_working(
    mysql: MySQLServer, hold: bool
) -> None:
    result, _ = run_django(
        """
        def fork_and_ask_the_child():
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                os.write(write, str(request(conn_id)).encode())
                os.close(write)
                sys.exit(0)  # a normal exit: everything inherited is finalised
            os.close(write)
            child = int(os.read(read, 64))
            os.close(read)
            return child, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        parent = request(conn_id)           # now idle in the pool
        child_idle, exit_idle = fork_and_ask_the_child()
        after_idle = request(conn_id)

        request_started.send(sender=None)   # now checked out by this process
        held = conn_id()
        child_busy, exit_busy = fork_and_ask_the_child()
        after_busy = conn_id()
        request_finished.send(sender=None)
        emit({
            "parent": [parent, after_idle, held, after_busy],
            "children": [child_idle, child_busy], "exits": [exit_idle, exit_busy],
            "stats": djpool.stats()["default"],
        })
        """,
        database(mysql),
    )
    assert result["exits"] == [0, 0]
    assert len(set(result["parent"])) == 1  # the same session all along
    assert result["parent"][0] not in result["children"]
    assert len(set(result["children"])) == 2
    assert result["stats"]["connects"] == 1
    assert result["stats"]["reconnects"] == 0


def test_neutralise_keeps_a_forked_child_from_closing_the_parents_session(mysql: MySQLServer) -> None:
    protected, exposed = mysql.connect(), mysql.connect()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                neutralise(protected)
                protected.close()  # sends COM_QUIT, but into /dev/null
                exposed.close()  # sends COM_QUIT on the socket it shares with the parent
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert server_id(protected) > 0
        # Without neutralise() the child's close ended the parent's session.
        with pytest.raises(MySQLdb.OperationalError):
            server_id(exposed)
    finally:
        protected.close()
        exposed.close()


# -- documentation ------------------------------------------------------------------------


def test_the_djpool_documentation_covers_every_option_counter_and_disconnect_code() -> None:
    text = (ROOT / "docs" / "djpool.md").read_text()
    defaults = {f.name: f.default for f in fields(PoolOptions)}
    for key in OPTION_DOCS:
        # One table row per option, with its default as PoolOptions has it.
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, key
        assert row.split("|")[2].strip() == f"`{defaults[key]}`", row
    for counter in COUNTERS:
        assert f"`{counter}`" in text, counter
    for code in DISCONNECT_CODES:
        assert str(code) in text, code
    for setting in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS", "PoolTimeout", "djpool.stats()"):
        assert setting in text, setting
