"""Shared fixtures: a reachable MySQL/MariaDB, per-session databases, server processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import MariaDB, MySQLServer, ServerProcess, migrate, server_from_url

DEFAULT_TEST_DATABASE_URL = "mysql://root@127.0.0.1:3306/test"


@pytest.fixture(scope="session")
def mysql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLServer]:
    """The server at TEST_DATABASE_URL, or a throwaway MariaDB when nothing answers there."""
    server = server_from_url(os.environ.get("TEST_DATABASE_URL") or DEFAULT_TEST_DATABASE_URL)
    if server.reachable():
        yield server
        return
    own = MariaDB()
    try:
        own.start()
        yield own.server
    finally:
        own.destroy()


@pytest.fixture(scope="session")
def private_mariadb() -> Iterator[MariaDB]:
    """A MariaDB of the tests' own, which tests may stop and start (never a shared one)."""
    own = MariaDB()
    try:
        own.start()
        yield own
    finally:
        own.destroy()


@pytest.fixture(scope="session")
def private_app_db(private_mariadb: MariaDB) -> Iterator[tuple[MariaDB, str, str]]:
    """A migrated demo database on the tests' own MariaDB: (server, database name, DATABASE_URL).

    For tests that read server-wide counters (``Connections``, ``Com_rollback``),
    which other clients of a shared server would disturb.
    """
    name = private_mariadb.server.create_database()
    url = private_mariadb.server.url(name)
    migrate(url)
    yield private_mariadb, name, url


@pytest.fixture(scope="session")
def app_db(mysql: MySQLServer) -> Iterator[tuple[MySQLServer, str]]:
    """A migrated database of the demo project on ``mysql``, dropped at the end."""
    name = mysql.create_database()
    try:
        migrate(mysql.url(name))
        yield mysql, name
    finally:
        mysql.drop_database(name)


@pytest.fixture(scope="session")
def app_db_url(app_db: tuple[MySQLServer, str]) -> str:
    server, name = app_db
    return server.url(name)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``server.py`` subprocesses; every one is stopped after the test."""
    started: list[ServerProcess] = []

    def start(database_url: str | None, *args: str, wait: bool = True, **kw: Any) -> ServerProcess:
        server = ServerProcess(database_url, *args, log_dir=tmp_path, **kw)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop()
