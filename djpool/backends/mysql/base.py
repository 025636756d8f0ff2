"""The djpool MySQL/MariaDB engine: Django's MySQL backend with a process-level pool.

Use ``ENGINE: "djpool.backends.mysql"`` and ``OPTIONS: {"pool": True}`` (or a
dict of pool options, see docs/djpool.md). Without ``OPTIONS["pool"]`` the
engine behaves exactly like ``django.db.backends.mysql``, plus fork safety.

Only the hooks Django means backends to override are overridden:
``get_connection_params``, ``get_new_connection``, ``init_connection_state``,
``connect`` (only to wrap it), ``create_cursor``, ``_close``, ``is_usable``,
``_set_autocommit`` and the error wrapper, plus ``close_if_unusable_or_obsolete``
for holding a connection between requests on one thread (docs/djpool.md). Django's
``close()`` therefore hands the connection back to the pool instead of closing
it, and the next ``connect()`` takes it out again, after an idle-aware
liveness check.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import MySQLdb
from django.db import connections
from django.db.backends.mysql import base as mysql_base
from django.db.utils import DatabaseError, DatabaseErrorWrapper
from django.utils.asyncio import async_unsafe
from django.utils.functional import cached_property

from djpool.options import parse_pool_options
from djpool.pool import Pool, Record, existing_pool, forget_inherited_connections, may_hold, pool_for

from .creation import DatabaseCreation
from .driver import MySQLDriver, disconnect_code, neutralise, note_statement

logger = logging.getLogger("djpool")

NO_DB_ALIAS = "__no_db__"


def open_connection(params: dict[str, Any]) -> Any:
    """Open one raw mysqlclient connection the way Django's backend does."""
    conn = MySQLdb.connect(**params)
    # mysqlclient's bytes encoder is a no-op Django removes too (mysqlclient#489).
    if conn.encoders.get(bytes) is bytes:
        conn.encoders.pop(bytes)
    return conn


class CursorWrapper(mysql_base.CursorWrapper):
    """Django's MySQL cursor wrapper, plus disconnect handling and state tracking.

    A disconnect on the first statement after checkout, in autocommit mode and
    outside any atomic block, is retried once on a fresh connection: nothing
    can have happened on the lost session that the retry would repeat.
    Anywhere else the error propagates, the connection is marked broken, and
    the pool discards it when Django hands it back.
    """

    def __init__(self, cursor: Any, db: DatabaseWrapper) -> None:
        super().__init__(cursor)
        self.db = db

    def execute(self, query: Any, args: Any = None) -> Any:
        replay = self.db._before_statement(query)
        try:
            return super().execute(query, args)
        except (MySQLdb.OperationalError, MySQLdb.InterfaceError) as exc:
            self.cursor = self.db._after_disconnect(exc, replay)
            return super().execute(query, args)

    def executemany(self, query: Any, args: Any) -> Any:
        replay = self.db._before_statement(query)
        try:
            return super().executemany(query, args)
        except (MySQLdb.OperationalError, MySQLdb.InterfaceError) as exc:
            self.cursor = self.db._after_disconnect(exc, replay)
            return super().executemany(query, args)


class _DisconnectAwareErrors(DatabaseErrorWrapper):
    """Django's error translation, noting disconnects on the way (commit, rollback, …)."""

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_value is not None:
            code = disconnect_code(exc_value)
            if code is not None:
                self.wrapper._mark_broken(code, exc_value)  # type: ignore[attr-defined]
        return super().__exit__(exc_type, exc_value, traceback)  # type: ignore[no-any-return]


class DatabaseWrapper(mysql_base.DatabaseWrapper):
    """Django's MySQL ``DatabaseWrapper`` whose connections come from a :class:`Pool`."""

    creation_class = DatabaseCreation
    #: The raw mysqlclient connection (None between checkouts).
    connection: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool: Pool[Any] | None = None
        #: The connection was handed back in place at the end of a request (Pool.hold):
        #: it is taken up again, liveness-checked, at its next use (_take_held).
        self._held = False
        #: A connection the pool already handed out for the next connect() to use.
        self._adopt: tuple[Pool[Any], Any] | None = None
        self._fresh_checkout = False
        self._internal_statements = False
        self._cached_pool: tuple[tuple[Any, ...], Pool[Any]] | None = None
        # CONN_MAX_AGE as configured. It is checked at every connect, but code
        # that later patches a live connection's settings_dict (Django's own
        # test suite sets CONN_MAX_AGE = None that way) gets Django's
        # persistent-connection behaviour instead of ImproperlyConfigured.
        self._configured_max_age = self.settings_dict.get("CONN_MAX_AGE", 0)

    # -- settings -------------------------------------------------------------

    @property
    def pool_enabled(self) -> bool:
        """True when ``OPTIONS["pool"]`` asks for pooling (never for the no-db alias)."""
        return bool(self.settings_dict["OPTIONS"].get("pool")) and self.alias != NO_DB_ALIAS

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        params.pop("pool", None)  # ours, not mysqlclient's
        return params

    @property
    def pool(self) -> Pool[Any] | None:
        """This process's pool for this alias and these settings (None when off)."""
        if not self.pool_enabled:
            return None
        return self._pool_for(self.get_connection_params())

    def _pool_for(self, params: dict[str, Any]) -> Pool[Any]:
        # Every checkout asks for the pool: remember the answer for as long as
        # the settings it was derived from stay the same (the test runner, for
        # one, renames the database in place) and the pool is open in this process.
        sd = self.settings_dict
        fingerprint = (
            sd["NAME"],
            sd["USER"],
            sd["PASSWORD"],
            sd["HOST"],
            sd["PORT"],
            sd["AUTOCOMMIT"],
            sd.get("CONN_HEALTH_CHECKS"),
            self._configured_max_age,
            repr(sd["OPTIONS"]),
        )
        cached = self._cached_pool
        if cached is not None and cached[0] == fingerprint:
            pool = cached[1]
            if not pool.closed and pool.pid == os.getpid() and existing_pool(self.alias) is pool:
                return pool
        pool = self._build_pool(params)
        self._cached_pool = (fingerprint, pool)
        return pool

    def _build_pool(self, params: dict[str, Any]) -> Pool[Any]:
        options = parse_pool_options(
            self.settings_dict["OPTIONS"].get("pool"),
            {**self.settings_dict, "CONN_MAX_AGE": self._configured_max_age},
            self.alias,
        )
        autocommit = bool(self.settings_dict["AUTOCOMMIT"])
        # Settings can change under a live wrapper (the test runner renames the
        # database): a different key gives a new pool and closes the old one.
        key = (
            repr(sorted((k, v) for k, v in params.items() if k != "conv")),
            autocommit,
            options,
        )

        def factory() -> Pool[Any]:
            driver = MySQLDriver(lambda: open_connection(params), autocommit)
            return Pool(self.alias, driver, options)

        return pool_for(self.alias, key, factory)

    # -- the connection life cycle ------------------------------------------

    @async_unsafe
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.pool_enabled:
            self._pool = None
            return open_connection(conn_params)
        if self._adopt is not None:
            pool, conn = self._adopt  # a held connection's replacement (see _take_held)
            self._adopt = None
        else:
            pool = self._pool_for(conn_params)
            conn = pool.checkout()
        self._pool = pool
        self._fresh_checkout = True
        return conn

    @async_unsafe
    def connect(self) -> None:
        # Statements run while connecting, Django's set-up and those of
        # connection_created receivers (sent at every checkout), establish the
        # application's baseline session state: not changes to discard it for.
        self._internal_statements = True
        try:
            super().connect()
        finally:
            self._internal_statements = False

    def init_connection_state(self) -> None:
        record = self._record()
        if record is not None and record.prepared and self._internal_statements:
            # Inside connect(): Django's SET statements already ran on this
            # session. An explicit call runs them again, as Django's backend does.
            return
        internal, self._internal_statements = self._internal_statements, True
        try:
            super().init_connection_state()
        finally:
            self._internal_statements = internal
        if record is not None:
            record.prepared = True
        self._fresh_checkout = True

    # -- holding the connection between requests (djpool.pool.hold_on_this_thread) --

    def close_if_unusable_or_obsolete(self) -> None:
        # Django calls this at the start and the end of every request; with
        # CONN_MAX_AGE=0 it closes, i.e. hands the connection back to the pool.
        if self._held:
            return  # the start of the next request: taken up at first use
        if self._may_hold() and self._pool is not None and self._pool.hold(self.connection):
            self._held = True
            # CONN_HEALTH_CHECKS is the pool's ping at the next take-up (ping_after=0),
            # as at a checkout; Django's own check would ping a second time.
            self.health_check_done = True
            return
        super().close_if_unusable_or_obsolete()

    def _may_hold(self) -> bool:
        return (
            self.connection is not None
            and may_hold()
            and not self.in_atomic_block
            and not self.needs_rollback
            and not self.errors_occurred
            and not self.savepoint_ids
            and not self.run_on_commit
            and self.settings_dict.get("CONN_MAX_AGE", 0) == 0
            and self.connection.get_autocommit() == bool(self.settings_dict["AUTOCOMMIT"])
        )

    def _take_held(self) -> None:
        """The first use after a request that held the connection: check it as a checkout would.

        Called where a request first talks to the server: a new cursor
        (create_cursor) or atomic()'s SET autocommit (_set_autocommit).
        Not from ensure_connection(): Django's own tests replace that method.
        """
        self._held = False
        pool = self._pool
        assert pool is not None
        held = self.connection
        try:
            with self.wrap_database_errors:
                conn = pool.take_held(held)
        except BaseException:
            self.connection = self._pool = None  # the next use connects afresh
            raise
        self._fresh_checkout = True
        if conn is not held:
            # Replaced (it idled too long, failed its ping or grew too old): Django
            # connects as usual (its session set-up, connection_created), with this one.
            self.connection = self._pool = None
            self._adopt = (pool, conn)
            with self.wrap_database_errors:
                self.connect()

    @async_unsafe
    def create_cursor(self, name: Any = None) -> CursorWrapper:
        if self._held:
            self._take_held()
        return CursorWrapper(self.connection.cursor(), self)

    def _close(self) -> None:
        if self.connection is None:
            return
        pool = self._pool
        if pool is None:
            return super()._close()  # type: ignore[no-any-return]
        conn, self.connection, self._pool = self.connection, None, None
        if self._held:
            self._held = False
            pool.release_held(conn)
            return
        if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
            # CONN_MAX_AGE was set on the live connection (see __init__): Django
            # manages persistence and closes only a connection it means to end
            # (failed health check, too old), so it must not be reused.
            pool.mark_broken(conn, "closed by Django: CONN_MAX_AGE set at run time")
        pool.checkin(conn)

    def is_usable(self) -> bool:
        if self.connection is None:
            return False  # handed back to the pool by _close(): not ours to ping
        record = self._record()
        if record is not None and record.broken:
            return False
        return super().is_usable()  # type: ignore[no-any-return]

    @cached_property
    def wrap_database_errors(self) -> DatabaseErrorWrapper:
        return _DisconnectAwareErrors(self)

    # -- disconnect handling (called by CursorWrapper) ------------------------

    def _record(self) -> Record | None:
        if self._pool is None or self.connection is None:
            return None
        return self._pool.record(self.connection)

    def _before_statement(self, query: Any) -> bool:
        """Note what the statement does to the session; say whether it may be replayed."""
        replayable = self._fresh_checkout and self.get_autocommit() and not self.in_atomic_block
        self._fresh_checkout = False
        record = self._record()
        if record is not None:
            # The server's idle clock restarts with every statement.
            record.last_statement = time.monotonic()
            if not self._internal_statements:
                note_statement(record, query)
        return replayable

    def _after_disconnect(self, exc: Exception, replayable: bool) -> Any:
        """Return a fresh raw cursor for one retry, or re-raise ``exc``."""
        code = disconnect_code(exc)
        if code is None:
            raise exc
        self._mark_broken(code, exc)
        pool = self._pool
        if not replayable or pool is None:
            if self.in_atomic_block or not self.get_autocommit():
                raise MySQLdb.OperationalError(
                    code,
                    f"{exc.args[1] if len(exc.args) > 1 else exc} (djpool: the connection was "
                    f"lost inside a transaction; the transaction is gone and is not "
                    f"replayed, the next request gets a fresh connection)",
                ) from exc
            raise exc
        self._replace_connection(pool, code, exc)
        return self.connection.cursor()

    def _replace_connection(self, pool: Pool[Any], code: int, exc: BaseException) -> None:
        """Swap the lost connection for a fresh, prepared one (for the one retry)."""
        self.connection = pool.replace(self.connection, _disconnect_reason(code, exc))
        self._pool = pool
        self.connection.autocommit(self.settings_dict["AUTOCOMMIT"])
        self.init_connection_state()
        self._fresh_checkout = False

    def _set_autocommit(self, autocommit: bool) -> None:
        # atomic() (and ATOMIC_REQUESTS) talks to the server first with SET
        # autocommit=0, not through a cursor: when that is the first round trip
        # after checkout, nothing has happened on the lost session yet, so it is
        # retried once on a fresh connection like a first statement.
        if self._held:
            self._take_held()
        replayable = self._fresh_checkout and not self.in_atomic_block and self._pool is not None
        try:
            super()._set_autocommit(autocommit)
        except DatabaseError as exc:
            cause = exc.__cause__
            code = disconnect_code(cause) if cause is not None else None
            if not replayable or code is None or self._pool is None or cause is None:
                raise
            self._replace_connection(self._pool, code, cause)
            super()._set_autocommit(autocommit)

    def _mark_broken(self, code: int, exc: BaseException) -> None:
        if self._pool is not None and self.connection is not None:
            self._pool.mark_broken(self.connection, _disconnect_reason(code, exc))


def _disconnect_reason(code: int, exc: BaseException) -> str:
    """``disconnect 2013: Lost connection ...``: the discard reason, with the MySQL error code."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return f"disconnect {code}: {args[1] if len(args) > 1 else exc}"


def _after_fork_in_child() -> None:
    """A forked child never uses, closes or resets its parent's connections."""
    forget_inherited_connections(neutralise)
    try:
        wrappers = connections.all(initialized_only=True)
    except Exception:
        return  # Django not configured in this process
    for wrapper in wrappers:
        if isinstance(wrapper, DatabaseWrapper) and wrapper.connection is not None:
            neutralise(wrapper.connection)
            wrapper.connection = None
            wrapper._pool = None
            wrapper._held = False
            wrapper._adopt = None


os.register_at_fork(after_in_child=_after_fork_in_child)
