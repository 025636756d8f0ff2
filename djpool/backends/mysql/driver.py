"""MySQL/MariaDB specifics the pool needs: disconnect codes, ping, reset, fork hygiene.

Nothing here uses the driver's own reconnect option: a silent reconnect
changes the connection id and loses session state behind Django's back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import MySQLdb

from djpool.pool import Record

#: Client and server error codes that mean "this connection is gone".
DISCONNECT_CODES = frozenset(
    {
        2006,  # CR_SERVER_GONE_ERROR: MySQL server has gone away
        2013,  # CR_SERVER_LOST: lost connection during query
        2014,  # CR_COMMANDS_OUT_OF_SYNC: the protocol state is unknown
        2045,  # CR_SHARED_MEMORY_CONNECT_ERROR family: transport failed
        2055,  # CR_SERVER_LOST_EXTENDED: lost connection at a stage
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL >= 8.0.24, idle disconnect)
        1053,  # ER_SERVER_SHUTDOWN: server shutdown in progress
    }
)

# Flags a cursor sets on the pool record while watching statements go by.
TRANSACTION_OPENED = "transaction opened"
CONSTRAINT_CHECKS_OFF = "constraint checks off"
SESSION_CHANGED = "session state changed"

_FK_CHECKS = re.compile(r"\s*SET\s+(?:SESSION\s+|@@SESSION\.)?FOREIGN_KEY_CHECKS\s*=\s*(\w+)\s*;?\s*$", re.I)
# Session state left by statements that are not SET: a user variable assigned in
# a SELECT (``@v := ...``, ``... INTO @v``) and a named lock (GET_LOCK), which
# outlives the request that took it.
_HIDDEN_STATE = re.compile(r":=|\bINTO\s+@|\bGET_LOCK\s*\(", re.I)


def disconnect_code(exc: BaseException) -> int | None:
    """The MySQL error code of ``exc`` if it means the connection is lost, else None."""
    if isinstance(exc, (MySQLdb.OperationalError, MySQLdb.InterfaceError)):
        code = exc.args[0] if exc.args else None
        if code in DISCONNECT_CODES:
            return code  # type: ignore[no-any-return]
        if isinstance(exc, MySQLdb.InterfaceError):
            return 0  # e.g. "(0, '')": the client already considers it closed
    return None


def note_statement(record: Record, sql: Any) -> None:
    """Track statements that leave session state a plain rollback cannot undo."""
    if isinstance(sql, bytes):
        sql = sql.decode("utf-8", "replace")
    # Runs for every statement: look at the first characters only, and run the
    # full-text pattern only when its cheap necessary conditions hold.
    head = sql[:48].lstrip()[:24].upper() or sql.lstrip()[:24].upper()
    if head.startswith(("BEGIN", "START TRANSACTION", "XA ")):
        record.flags.add(TRANSACTION_OPENED)
    elif head.startswith("SET "):
        for statement in sql.split(";"):
            if not statement.strip():
                continue
            fk = _FK_CHECKS.match(statement)
            if fk is None:
                record.flags.add(SESSION_CHANGED)
            elif fk.group(1).upper() in ("0", "OFF", "FALSE"):
                record.flags.add(CONSTRAINT_CHECKS_OFF)
            else:
                record.flags.discard(CONSTRAINT_CHECKS_OFF)
    elif head.startswith(("LOCK", "USE ", "CREATE TEMPORARY", "PREPARE", "HANDLER")):
        record.flags.add(SESSION_CHANGED)
    elif ("@" in sql or "lock" in sql.lower()) and _HIDDEN_STATE.search(sql):
        record.flags.add(SESSION_CHANGED)


class MySQLDriver:
    """Implements :class:`djpool.pool.Driver` for mysqlclient connections."""

    def __init__(self, connect: Callable[[], Any], autocommit: bool) -> None:
        self._connect = connect
        self.autocommit = autocommit

    def connect(self) -> Any:
        return self._connect()

    def ping(self, conn: Any) -> None:
        conn.ping()

    def reset(self, conn: Any, record: Record) -> str | None:
        if CONSTRAINT_CHECKS_OFF in record.flags:
            return "unknown session state: foreign key checks left disabled"
        if SESSION_CHANGED in record.flags:
            return "unknown session state: SET/LOCK/USE/temporary table/user variable/named lock"
        # get_autocommit() reads the client's copy of the server status: no round trip.
        if not conn.get_autocommit() or TRANSACTION_OPENED in record.flags:
            conn.rollback()
            record.last_statement = None  # the session was just active
        if conn.get_autocommit() != self.autocommit:
            conn.autocommit(self.autocommit)
            record.last_statement = None
        return None

    def close(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception:
            pass  # already closed or broken: nothing more to release

    def server_idle_timeout(self, conn: Any) -> float | None:
        # The session's own value: an interactive session gets interactive_timeout.
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT @@session.wait_timeout")
            row = cursor.fetchone()
        finally:
            cursor.close()
        return float(row[0]) if row and row[0] else None

    def connection_id(self, conn: Any) -> int | None:
        return conn.thread_id()  # type: ignore[no-any-return]


def neutralise(conn: Any) -> None:
    """Make an inherited connection harmless in a forked child.

    The child shares the socket with its parent. Closing or garbage-collecting
    the object would send COM_QUIT on it and kill the parent's session, so the
    child's file descriptor is pointed at /dev/null first: whatever the client
    library writes later goes nowhere, and the parent's socket is untouched.
    """
    try:
        fd = conn.fileno()
    except Exception:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
