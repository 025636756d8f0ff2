"""Test helpers: real server processes, real MariaDB servers, free ports.

Nothing here mocks anything: :class:`ServerProcess` runs ``server.py`` as a
subprocess and talks HTTP to it; :class:`MariaDB` runs a throwaway ``mariadbd``
in a temporary data directory when the tests need a server of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import MySQLdb
import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last_exc!r}")


# -- MySQL / MariaDB ------------------------------------------------------------


@dataclass
class MySQLServer:
    """Connection facts of a reachable MySQL/MariaDB server."""

    host: str
    port: int
    user: str
    password: str

    def connect(self, db: str | None = None, **kw: Any) -> Any:
        """A plain mysqlclient connection (autocommit on) for the test's own checks."""
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "passwd": self.password,
        }
        if db:
            args["db"] = db
        conn = MySQLdb.connect(**args, **kw)
        conn.autocommit(True)
        return conn

    def url(self, db: str, **query: str) -> str:
        """A DATABASE_URL for ``db`` on this server."""
        auth = self.user + (f":{self.password}" if self.password else "")
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"mysql://{auth}@{self.host}:{self.port}/{db}" + (f"?{q}" if q else "")

    def reachable(self) -> bool:
        """True when a connection can be made now."""
        try:
            self.connect(connect_timeout=2).close()
            return True
        except MySQLdb.Error:
            return False

    def create_database(self, prefix: str = "djtest") -> str:
        """Create a uniquely named database; the tests drop only databases they made."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        conn = self.connect()
        try:
            conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database made by :meth:`create_database`."""
        assert name.startswith(("djtest_", "test_djtest_")), name
        conn = self.connect()
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    def query(self, sql: str, args: Any = None, db: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement on a short-lived observer connection."""
        conn = self.connect(db)
        try:
            cur = conn.cursor()
            cur.execute(sql, args)
            return list(cur.fetchall())
        finally:
            conn.close()

    def sessions_on(self, db: str) -> list[int]:
        """Server-side ids of the sessions whose current database is ``db``."""
        rows = self.query("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (db,))
        return sorted(int(r[0]) for r in rows)

    def connections_counter(self) -> int:
        """The server's ``Connections`` status counter (connection attempts so far)."""
        return int(self.query("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])


def server_from_url(url: str) -> MySQLServer:
    """Parse a ``mysql://user[:pass]@host[:port]/...`` URL."""
    u = urlparse(url)
    return MySQLServer(u.hostname or "127.0.0.1", u.port or 3306, u.username or "root", u.password or "")


class MariaDB:
    """A throwaway MariaDB server: its own data directory, port and socket.

    Used when ``TEST_DATABASE_URL`` does not answer, and by tests that stop
    and restart the database (never done to a shared server).
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="djpool-mariadb-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.server = MySQLServer("127.0.0.1", self.port, "root", "")

    @staticmethod
    def binary(name: str) -> str:
        """Path of a MariaDB program (Debian puts the server in /usr/sbin)."""
        for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if candidate and os.path.exists(candidate):
                return candidate
        raise RuntimeError(f"{name} not found: install mariadb-server (scripts/sysdeps.sh test)")

    def install(self) -> None:
        """Create the system tables; root may log in over TCP with no password."""
        (self.dir / "data").mkdir()
        if os.geteuid() == 0:
            # mkdtemp() made the directory 0700 root: mariadbd (as mysql) must get in.
            subprocess.run(["chown", "-R", "mysql:mysql", str(self.dir)], check=True)
        subprocess.run(
            [
                self.binary("mariadb-install-db"),
                f"--datadir={self.dir / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=" + ("mysql" if os.geteuid() == 0 else os.environ.get("USER", "")),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if os.geteuid() == 0:
            shutil.chown(self.dir, "mysql")
            subprocess.run(["chown", "-R", "mysql:mysql", str(self.dir)], check=True)

    def start(self, timeout: float = 30.0) -> None:
        """Start mariadbd and wait until it accepts connections."""
        if not (self.dir / "data" / "mysql").exists():
            self.install()
        args = [
            self.binary("mariadbd"),
            "--no-defaults",
            f"--datadir={self.dir / 'data'}",
            f"--socket={self.dir / 'mysqld.sock'}",
            f"--pid-file={self.dir / 'mysqld.pid'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--log-error=" + str(self.dir / "error.log"),
        ]
        if os.geteuid() == 0:
            args.append("--user=mysql")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self.server.reachable, timeout, f"throwaway MariaDB on port {self.port}")
        except AssertionError:
            log = (self.dir / "error.log").read_text(errors="replace")[-3000:]
            self.stop()
            raise AssertionError(f"throwaway MariaDB did not start:\n{log}") from None

    def stop(self) -> None:
        """Stop mariadbd (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def destroy(self) -> None:
        """Stop and delete the data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def migrate(database_url: str, settings: str = "tests.settings") -> None:
    """Run ``manage.py migrate`` against ``database_url``."""
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": settings}
    result = subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- server.py --------------------------------------------------------------------


class ServerProcess:
    """``server.py`` running as a subprocess on a free port, with its log captured."""

    def __init__(
        self,
        database_url: str | None,
        *args: str,
        settings: str = "tests.settings",
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = (log_dir or Path(tempfile.mkdtemp(prefix="djserver-"))) / f"server-{self.port}.log"
        self.args = [PYTHON, "server.py", f"--port={self.port}", f"--settings={settings}", *args]
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
        }
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    def start(self, wait: bool = True, timeout: float = 30.0) -> ServerProcess:
        """Start the process; with ``wait``, return once it accepts connections."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        if wait:

            def accepting() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True

            try:
                wait_for(accepting, timeout, f"server.py on port {self.port}")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- server log ---\n{self.log()}") from None
        return self

    def url(self, path: str) -> str:
        return self.base + path

    def get(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        return self.session.get(self.url(path), **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        return self.session.post(self.url(path), **kw)

    def health(self) -> dict[str, Any]:
        """The parsed ``/-/health`` body (whatever its status)."""
        return json.loads(self.get("/-/health").text)  # type: ignore[no-any-return]

    def log(self) -> str:
        """Everything the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; return the exit code (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.session.close()
        self._log.close()
        code = self.proc.returncode
        return int(code)

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
