"""Test database creation for djpool: Django's, with the pool closed around it.

The test runner renames the database under a live connection wrapper; pooled
connections to the old name must not be handed out afterwards, and a database
being dropped should not have idle pooled sessions attached to it.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.mysql.creation import DatabaseCreation as MySQLDatabaseCreation

from djpool.pool import close_pool


class DatabaseCreation(MySQLDatabaseCreation):
    """Closes this alias's pool before the test database is created or destroyed."""

    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> Any:
        close_pool(self.connection.alias)
        return super()._create_test_db(verbosity, autoclobber, keepdb)

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        close_pool(self.connection.alias)
        super()._destroy_test_db(test_database_name, verbosity)
