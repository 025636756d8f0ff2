"""``python -m deploy rolling-restart``: restart every worker of this host, one port at a time.

For each port: stop the worker through supervisor or systemd (SIGTERM: it
drains), start it again, wait until ``/-/health`` answers 200 from a new pid.
Then, before the next port, one of:

* default: wait ``[nginx] fail_timeout``. nginx counted the stopped worker's
  refused connections as failures and, after ``max_fails`` of them, sends it
  nothing for ``fail_timeout``; stopping the next worker sooner leaves fewer
  live workers than it seems, with few ports none at all, and nginx answers
  every request with 502 ("no live upstreams"). Requests refused by the
  stopped worker are retried by nginx, POSTs too (nothing was sent).
* ``--mark-down``: before stopping a worker, mark its port ``down`` in the
  installed nginx file (the previous port comes back in the same edit),
  reload nginx and wait until nginx holds no connection to the port; one more
  reload at the end puts every port back. Faster (no waiting), and the worker
  drains with nothing in flight; but each reload makes the old nginx workers
  close their idle keep-alive connections to clients, and a client that sends
  on one at that moment gets no response.

docs/deploy.md has the measurements of both. If a new worker does not become
healthy, the restart stops there (with --mark-down, its port stays marked
down), the remaining ports keep their old workers, and it exits 1 saying so.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol, TextIO

from . import render
from .config import DeployConfig, Host
from .nginx import host_port


class ProcessControl(Protocol):
    """What a process manager must do for a rolling restart."""

    def stop(self, port: int) -> None:
        """Stop the port's worker and wait until it has exited."""

    def start(self, port: int) -> None:
        """Start the port's worker."""


class RollingRestartError(Exception):
    """The restart cannot go on; the message says where it stopped and what serves."""


def health(config: DeployConfig, address: str, port: int, timeout: float = 2.0) -> tuple[int, int | None]:
    """``(status, pid)`` of a worker's ``/-/health``; ``(0, None)`` when nothing answers."""
    url = f"http://{host_port(address, port)}{config.internal_prefix}health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError:
        return 0, None
    try:
        pid = json.loads(body).get("pid")
    except (ValueError, AttributeError):
        pid = None
    return status, pid if isinstance(pid, int) else None


def wait_healthy(config: DeployConfig, host: Host, port: int, old_pid: int | None, timeout: float) -> int:
    """Wait for a 200 from a pid other than ``old_pid``; return it, or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    status, pid = 0, None
    while time.monotonic() < deadline:
        status, pid = health(config, host.address, port)
        if status == 200 and pid is not None and pid != old_pid:
            return pid
        time.sleep(0.1)
    seen = f"last answer: {status} from pid {pid}" if status else "nothing answered"
    raise RollingRestartError(f"no healthy new worker on port {port} within {timeout:g} s ({seen})")


def established(port: int) -> int | None:
    """Established TCP connections to local ``port`` (Linux /proc), None if unknown."""
    count = 0
    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count if found else None


class NginxMarker:
    """Marks one worker down in the installed nginx file and reloads nginx."""

    def __init__(self, config: DeployConfig) -> None:
        assert config.nginx.conf_path
        self.config = config
        self.path = Path(config.nginx.conf_path)
        self.reload_command = shlex.split(config.nginx.reload_command)

    def _render(self, down: set[tuple[str, int]]) -> str:
        return render.files(self.config, down)[render.nginx_site(self.config)]

    def verify_installed(self) -> None:
        """Refuse to rewrite a file that is not what this deploy file renders (hand edits)."""
        try:
            installed = self.path.read_text()
        except OSError as exc:
            raise RollingRestartError(f"cannot read [nginx] conf_path {self.path}: {exc.strerror}") from exc
        if _body(installed) != _body(self._render(set())):
            raise RollingRestartError(
                f"{self.path} is not what {self.config.source} renders now: render and install "
                "it (and reload nginx) first, so that marking a port down changes nothing else"
            )

    def set_down(self, down: set[tuple[str, int]]) -> None:
        """Write the file with ``down`` marked, and reload nginx."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(self._render(down))
        tmp.replace(self.path)
        result = subprocess.run(self.reload_command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RollingRestartError(
                f"nginx reload ({self.config.nginx.reload_command}) failed: "
                f"{(result.stderr or result.stdout).strip()}"
            )


def _body(text: str) -> str:
    """A generated file without its header comment (the source path may differ per machine)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()


def wait_released(port: int, timeout: float) -> tuple[bool, int | None]:
    """Wait until no connection to ``port`` is established: (released, remaining)."""
    deadline = time.monotonic() + timeout
    remaining = established(port)
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = established(port)
    return not remaining, remaining


class Progress:
    """One line per port, growing as its steps complete."""

    def __init__(self, out: TextIO, index: int, total: int, host: Host, port: int) -> None:
        self.out = out
        self.started = time.monotonic()
        self.stage = "health check of the old worker"
        self.write(f"[{index}/{total}] {host_port(host.address, port)}")

    def write(self, text: str) -> None:
        """Append ``text`` to the port's line."""
        self.out.write(text)
        self.out.flush()

    def step(self, text: str, next_stage: str) -> None:
        """Append one finished step; ``next_stage`` names what runs now (for error messages)."""
        self.write(f"  {text}")
        self.stage = next_stage

    def done(self, text: str) -> None:
        """End the line."""
        self.write(f"  {text} ({time.monotonic() - self.started:.1f} s)\n")


def rolling_restart(
    config: DeployConfig,
    control: ProcessControl,
    hosts: list[Host],
    marker: NginxMarker | None,
    out: TextIO = sys.stdout,
    start_timeout: float = 60.0,
) -> int:
    """Restart every worker of ``hosts`` one port at a time; 0 when all came back healthy."""
    ports = [(host, port) for host in hosts for port in host.port_list]
    if marker is not None:
        marker.verify_installed()
        if len(config.workers) < 2:
            out.write("note: a single worker cannot be taken out of nginx; restarting it in place\n")
            marker = None
    else:
        out.write("note: ports stay in nginx; waiting [nginx] fail_timeout between them (see --mark-down)\n")
    for index, (host, port) in enumerate(ports, 1):
        progress = Progress(out, index, len(ports), host, port)
        try:
            restart_one(config, control, host, port, marker, progress, start_timeout)
        except Exception as exc:
            progress.done("FAILED")
            report_failure(config, out, host, port, progress.stage, exc, marker, ports[index:])
            return 1
        if marker is None:
            wait_readmitted(config, out)
    if marker is not None:
        marker.set_down(set())
        out.write("every port is back in nginx\n")
    out.write(f"restarted {len(ports)} worker(s)\n")
    return 0


def report_failure(
    config: DeployConfig,
    out: TextIO,
    host: Host,
    port: int,
    stage: str,
    exc: Exception,
    marker: NginxMarker | None,
    untouched: list[tuple[Host, int]],
) -> None:
    """Say where the restart stopped, what serves now, and what was left alone."""
    out.write(f"error: {exc}\n")
    status, pid = health(config, host.address, port)
    serving = f"pid {pid} answers its health check" if status == 200 else "it has no healthy worker"
    out.write(f"stopped at port {port} ({stage}): {serving}")
    out.write(f"; it stays marked down in {marker.path}\n" if marker is not None else "\n")
    if untouched:
        out.write(f"port(s) {', '.join(str(p) for _h, p in untouched)} keep their old workers, untouched\n")


def wait_readmitted(config: DeployConfig, out: TextIO) -> None:
    """Without --mark-down: give nginx fail_timeout to take the restarted worker back."""
    seconds = config.nginx.fail_timeout
    if config.nginx.max_fails and seconds:
        out.write(f"      waiting {seconds:g} s ([nginx] fail_timeout) for nginx to take it back\n")
        out.flush()
        time.sleep(seconds)


def restart_one(
    config: DeployConfig,
    control: ProcessControl,
    host: Host,
    port: int,
    marker: NginxMarker | None,
    progress: Progress,
    start_timeout: float,
) -> None:
    """Take one worker out of nginx, drain it, start a new one, wait until it is healthy.

    Marking this port down puts the previous one back: one nginx reload per port.
    """
    _status, old_pid = health(config, host.address, port)
    progress.step(
        f"pid {old_pid}" if old_pid else "not serving", "taking it out of nginx" if marker else "stop"
    )
    if marker is not None:
        marker.set_down({(host.label, port)})
        released, remaining = wait_released(port, config.graceful_timeout)
        progress.step(
            "out of nginx" if released else f"out of nginx ({remaining} connection(s) left)", "stop"
        )
    started = time.monotonic()
    control.stop(port)
    progress.step(f"drained {time.monotonic() - started:.1f} s", "start")
    control.start(port)
    progress.step("started", "waiting for a healthy new worker")
    new_pid = wait_healthy(config, host, port, old_pid, start_timeout)
    progress.done(f"healthy, pid {new_pid}")
