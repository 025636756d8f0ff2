"""``server.py --ports=A-C``: one worker per port, supervised by the launcher.

Every test runs the real launcher as a subprocess on consecutive free ports,
sends it (or its workers) real signals and talks HTTP to the workers.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.support import PYTHON, ROOT, wait_for


def consecutive_free_ports(count: int, attempts: int = 50) -> list[int]:
    """``count`` consecutive TCP ports on 127.0.0.1 that nothing uses right now.

    Drawn from below Linux's ephemeral range (32768-60999), so that no outgoing
    connection of this machine takes one of them before the launcher binds it.
    """
    for _ in range(attempts):
        first = random.randint(20000, 32000 - count)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return list(range(first, first + count))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError(f"found no {count} consecutive free ports in {attempts} attempts")


def health(port: int, timeout: float = 5) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}/-/health", timeout=timeout)


def healthy_pid(port: int) -> int | None:
    """The pid of the worker answering /-/health on ``port`` with 200, else None."""
    try:
        response = health(port)
    except requests.RequestException:
        return None
    return int(response.json()["pid"]) if response.status_code == 200 else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Launcher:
    """``server.py --ports=...`` as a subprocess, with its log (launcher and workers) captured."""

    def __init__(self, ports: list[int], database_url: str | None, *args: str, log_path: Path) -> None:
        self.ports = ports
        self.log_path = log_path
        self.args = [
            PYTHON,
            "server.py",
            f"--ports={ports[0]}-{ports[-1]}",
            "--settings=tests.settings",
            *args,
        ]
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
        }
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Launcher:
        self.env.update(env or {})
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            wait_for(lambda: f"all {len(self.ports)} workers ready" in self.log(), 30, "the launcher")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- launcher log ---\n{self.log()}") from None
        return self

    def pids(self) -> dict[int, int | None]:
        """Port -> pid of the healthy worker answering there."""
        return {port: healthy_pid(port) for port in self.ports}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its workers notice they are orphaned and drain
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


@pytest.fixture
def start_launcher(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    """Start launchers on consecutive free ports; each is stopped after the test."""
    started: list[Launcher] = []

    def start(
        count: int, database_url: str | None, *args: str, env: dict[str, str] | None = None
    ) -> Launcher:
        ports = consecutive_free_ports(count)
        launcher = Launcher(ports, database_url, *args, log_path=tmp_path / f"launcher-{ports[0]}.log")
        started.append(launcher)
        return launcher.start(env)

    yield start
    for launcher in started:
        launcher.stop()


class Client(threading.Thread):
    """Loops over every port with keep-alive connections, recording whatever is not a 200."""

    def __init__(self, ports: list[int], path: str = "/test/client", limit: int = 5000) -> None:
        super().__init__(daemon=True)
        self.urls = [f"http://127.0.0.1:{port}{path}" for port in ports]
        self.limit = limit
        self.halt = threading.Event()
        self.sent = 0
        self.failures: list[str] = []

    def run(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + 60
        while not self.halt.is_set() and self.sent < self.limit and time.monotonic() < deadline:
            url = self.urls[self.sent % len(self.urls)]
            self.sent += 1
            try:
                response = session.get(url, timeout=10)
                if response.status_code != 200:
                    self.failures.append(f"{url}: {response.status_code} {response.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(f"{url}: {exc!r}")

    def finish(self) -> None:
        self.halt.set()
        self.join(30)


# -- rolling restart, crashes, recycling ---------------------------------------------------------


def test_hup_restarts_every_port_with_a_new_worker_and_no_failed_request(
    start_launcher: Callable[..., Launcher], app_db_url: str
) -> None:
    launcher = start_launcher(3, app_db_url)
    before = launcher.pids()
    assert None not in before.values()
    client = Client(launcher.ports)
    client.start()
    wait_for(lambda: client.sent > 30, 10, "the client to get going")
    started = time.monotonic()
    launcher.signal(signal.SIGHUP)
    wait_for(lambda: "rolling restart done" in launcher.log(), 30, "the rolling restart")
    rolled = time.monotonic() - started
    sent_during = client.sent
    time.sleep(0.3)
    client.finish()
    assert client.failures == []
    assert client.sent > sent_during > 30
    after = launcher.pids()
    for port in launcher.ports:
        assert after[port] is not None and after[port] != before[port], (before, after)
        assert not alive(before[port])  # type: ignore[arg-type]
    assert launcher.log().count("new worker pid") == 3
    print(f"rolled 3 ports in {rolled:.2f} s; {client.sent} requests, none failed")


def test_hup_with_a_broken_deploy_keeps_the_old_workers_serving(
    start_launcher: Callable[..., Launcher], tmp_path: Path
) -> None:
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    settings = deploy / "hup_settings.py"
    settings.write_text("from tests.settings import *  # noqa: F403\n")
    launcher = start_launcher(
        2, None, "--settings=hup_settings", env={"PYTHONPATH": f"{deploy}{os.pathsep}{ROOT}"}
    )
    before = launcher.pids()
    settings.write_text("raise RuntimeError('a broken deploy, on purpose')\n")
    client = Client(launcher.ports)
    client.start()
    launcher.signal(signal.SIGHUP)
    wait_for(lambda: "rolling restart stopped at port" in launcher.log(), 30, "the roll to give up")
    time.sleep(1.0)  # time for anything the launcher might still start
    client.finish()
    assert client.failures == []
    assert launcher.proc is not None and launcher.proc.poll() is None
    assert launcher.pids() == before
    log = launcher.log()
    assert "a broken deploy, on purpose" in log
    # One failed attempt on the first port; nothing else was started behind the roll's back.
    assert log.count("started worker pid") == 2 + 1
    # Once the deploy is fixed, the next HUP goes through.
    settings.write_text("from tests.settings import *  # noqa: F403\n")
    launcher.signal(signal.SIGHUP)
    wait_for(lambda: "rolling restart done" in launcher.log(), 30, "the second roll")
    after = launcher.pids()
    assert all(after[port] not in (None, before[port]) for port in launcher.ports)
    assert launcher.stop() == 0


def test_a_killed_worker_is_back_and_healthy_within_2_seconds(
    start_launcher: Callable[..., Launcher], app_db_url: str
) -> None:
    launcher = start_launcher(2, app_db_url)
    victim_port, other_port = launcher.ports
    before = launcher.pids()
    killed_at = time.monotonic()
    os.kill(before[victim_port], signal.SIGKILL)  # type: ignore[arg-type]
    new_pid = wait_for(
        lambda: (pid := healthy_pid(victim_port)) not in (None, before[victim_port]) and pid,
        5,
        "a new healthy worker on the port",
    )
    back_after = time.monotonic() - killed_at
    assert back_after < 2.0, f"took {back_after:.2f}s"
    assert new_pid != before[victim_port]
    assert launcher.pids()[other_port] == before[other_port]  # the other port was not touched
    assert f"port {victim_port}: worker pid {before[victim_port]} died (killed by SIGKILL)" in launcher.log()
    assert launcher.stop() == 0
    print(f"kill -9 -> healthy again in {back_after:.2f} s")


def test_max_requests_under_ports_replaces_the_worker_without_a_failed_request(
    start_launcher: Callable[..., Launcher], app_db_url: str
) -> None:
    launcher = start_launcher(2, app_db_url, "--max_requests=100")
    before = launcher.pids()  # two requests, not Django requests: they do not count
    client = Client(launcher.ports, limit=300)
    client.run()  # in this thread: 300 requests, 150 per port
    assert client.sent == 300
    assert client.failures == []
    after = wait_for(lambda: (p := launcher.pids()) and None not in p.values() and p, 10, "healthy workers")
    for port in launcher.ports:
        assert after[port] != before[port]
        assert not alive(before[port])  # type: ignore[arg-type]
    assert launcher.log().count("is recycling; starting its replacement") >= 2


# -- start-up failures -------------------------------------------------------------------------


def run_launcher(ports: list[int], tmp: Path, *args: str, timeout: float = 60) -> tuple[int, str, float]:
    """Run the launcher to its end; its temporary files go under ``tmp``."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env["TMPDIR"] = str(tmp)
    started = time.monotonic()
    result = subprocess.run(
        [PYTHON, "server.py", f"--ports={ports[0]}-{ports[-1]}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def test_launcher_exits_nonzero_with_a_clear_message_when_workers_cannot_start(tmp_path: Path) -> None:
    ports = consecutive_free_ports(2)
    code, output, took = run_launcher(ports, tmp_path, "--settings=no.such.module")
    assert code != 0
    assert "could not load Django (no.such.module): No module named 'no'" in output
    assert f"worker(s) on port(s) {ports[0]}, {ports[1]} failed to start; stopping" in output
    assert "restarting" not in output  # a worker that never started is not retried
    assert took < 15, f"took {took:.1f}s to give up"
    assert list(tmp_path.iterdir()) == []  # no notify sockets or directories left behind
    for port in ports:  # nothing is left listening
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_launcher_exits_nonzero_naming_a_taken_port(tmp_path: Path) -> None:
    ports = consecutive_free_ports(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[1]))
        squatter.listen(1)
        code, output, _ = run_launcher(ports, tmp_path, "--settings=tests.settings")
    assert code != 0
    assert f"cannot listen on 127.0.0.1:{ports[1]}" in output
    assert "started worker" not in output  # it failed before starting any
    assert list(tmp_path.iterdir()) == []
