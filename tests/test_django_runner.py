"""Django's own test runner works on djpool: create, use and drop the test database."""

from __future__ import annotations

import os
import subprocess

from tests.support import PYTHON, ROOT, MySQLServer


def test_manage_py_test_runs_on_djpool_and_drops_its_test_database(
    app_db: tuple[MySQLServer, str], app_db_url: str
) -> None:
    mysql, db = app_db
    env = {**os.environ, "DATABASE_URL": app_db_url, "DJANGO_SETTINGS_MODULE": "conf.settings"}
    result = subprocess.run(
        [PYTHON, "manage.py", "test", "conf.notes", "--noinput", "-v", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (
        "djpool.backends.mysql"
        in subprocess.run(
            [
                PYTHON,
                "-c",
                "from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    assert f"Creating test database for alias 'default' ('test_{db}')" in output
    assert "OK" in output
    leftover = mysql.query("SHOW DATABASES LIKE %s", (f"test_{db}",))
    assert leftover == [], "the test database was not dropped"
