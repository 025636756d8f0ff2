"""``python -m deploy check``: will this deploy file work here?

Renders every file into a temporary directory and has the real programs
judge them: ``nginx -t`` (in a private prefix, touching nothing global),
supervisor's own config parser, ``systemd-analyze verify``. Then checks what
no single program sees: worker ports already taken on this machine, and the
fleet's database connections against the server's ``max_connections``.

Every line printed starts with ``ok``, ``note`` (something not checked, and
why) or ``FAIL``; any FAIL makes the command exit 1.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import os
import pwd
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from appserver.config import parse_networks

from . import nginx, render, supervisor, systemd
from .config import DeployConfig, Host
from .nginx import host_port


@dataclass
class Report:
    """Check results, printed as they come."""

    out: TextIO = sys.stdout
    problems: list[str] = field(default_factory=list)

    def ok(self, message: str) -> None:
        """Something checked and fine."""
        print(f"ok    {message}", file=self.out, flush=True)

    def note(self, message: str) -> None:
        """Something not checked here, and why."""
        print(f"note  {message}", file=self.out, flush=True)

    def fail(self, message: str) -> None:
        """A problem: the command will exit non-zero."""
        self.problems.append(message)
        print(f"FAIL  {message}", file=self.out, flush=True)


def run(config: DeployConfig, report: Report, database_url: str | None, skip_database: bool) -> int:
    """Run every check; return the exit code (0: all passed)."""
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        out = Path(tmp) / "rendered"
        try:
            render.write(config, out)
        except ValueError as exc:
            report.fail(f"render: {exc}")
            return 1
        report.ok(f"rendered {len(config.workers)} workers on {len(config.hosts)} host(s)")
        check_paths(config, report)
        check_nginx(config, out, Path(tmp) / "nginx", report)
        for host in config.hosts:
            check_supervisor(config, host, out, report)
            check_systemd(config, host, out, report)
    check_ports(config, report)
    check_server_access(config, report)
    if skip_database:
        report.note("database: max_connections not checked (--skip-database)")
    else:
        check_database(config, database_url, report)
    return 1 if report.problems else 0


def check_nginx(config: DeployConfig, out: Path, prefix: Path, report: Report) -> None:
    """``nginx -t`` on the rendered site file."""
    program = nginx.binary()
    if program is None:
        report.note("nginx: not installed here, nginx -t skipped")
        return
    ok, output = nginx.validate_site(program, out / render.nginx_site(config), prefix)
    if ok:
        report.ok(f"nginx -t: {render.nginx_site(config)} is valid")
        return
    errors = [line.strip() for line in output.splitlines() if "[emerg]" in line or "[error]" in line]
    for line in errors or [output or "failed without saying why"]:
        report.fail(f"nginx -t: {line}")


def check_supervisor(config: DeployConfig, host: Host, out: Path, report: Report) -> None:
    """supervisor's own parser on one host's file.

    supervisor refuses a file whose log directory or user does not exist on
    this machine; :func:`check_paths` reports those, and the parser then reads
    a copy that uses a temporary directory and this user instead.
    """
    path = out / render.host_dir(host.label) / "supervisor" / f"{config.app}.conf"
    stand_ins = _stand_ins(config, out)
    if stand_ins != config:
        path = out / f"supervisor-check-{host.label}.conf"
        path.write_text(supervisor.render(stand_ins, host, render.header(config, ";")))
    problems = supervisor.parse_check(stand_ins, host, path)
    for problem in problems:
        report.fail(f"{host.label}: {problem}")
    if not problems:
        report.ok(f"supervisor: {host.label}: group {config.app} with {len(host.port_list)} programs parses")


def _stand_ins(config: DeployConfig, out: Path) -> DeployConfig:
    paths, user = config.paths, config.user
    if not Path(paths.log_dir).is_dir():
        paths = dataclasses.replace(paths, log_dir=str(out))
    if not _user_exists(user):
        user = pwd.getpwuid(os.geteuid()).pw_name
    return dataclasses.replace(config, paths=paths, user=user)


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def check_paths(config: DeployConfig, report: Report) -> None:
    """On a host of the deploy file: the user and every path must exist."""
    if not any(is_local(host.address) for host in config.hosts):
        report.note("paths: this machine is none of the hosts; paths and user not checked")
        return
    paths = config.paths
    wanted = {
        "[paths] code (server.py)": paths.server_script,
        "[paths] virtualenv (bin/python)": paths.python,
        "[paths] static_root": paths.static_root,
        "[paths] media_root": paths.media_root,
        "[paths] log_dir": paths.log_dir,
        "[paths] config (the installed deploy file)": config.config_path,
    }
    missing = [f"{what}: {path}" for what, path in wanted.items() if not Path(path).exists()]
    for item in missing:
        report.fail(f"paths: does not exist on this machine: {item}")
    if not _user_exists(config.user):
        report.fail(f"user: no user {config.user!r} on this machine")
    elif not missing:
        report.ok(f"paths: every path exists; user {config.user} exists")


def check_systemd(config: DeployConfig, host: Host, out: Path, report: Report) -> None:
    """``systemd-analyze verify`` on one host's units, and paths hidden by the hardening."""
    problems, notes = systemd.verify(config, host, out / render.host_dir(host.label) / "systemd")
    problems += systemd.home_problems(config)
    for note in notes:
        report.note(f"systemd: {host.label}: {note}")
    for problem in problems:
        report.fail(f"{host.label}: {problem}")
    if not problems and systemd.analyze_binary():
        report.ok(f"systemd-analyze verify: {host.label}: {config.app}@.service, {config.app}.target")


# -- ports ---------------------------------------------------------------------------


def is_local(address: str) -> bool:
    """True when ``address`` is an IP address of this machine (it can be bound)."""
    try:
        return port_state(address, 0) == "free"
    except OSError:
        return False


def port_state(address: str, port: int) -> str:
    """``free``, ``in use``, ``not local`` (the address is not this machine's) or ``name``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "name"
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "not local"
            raise
    return "free"


def running_worker(config: DeployConfig, address: str, port: int) -> int | None:
    """The pid of the server.py worker answering ``/-/health`` there, or None."""
    url = f"http://{host_port(address, port)}{config.internal_prefix}health"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503 while draining or without its database
        body = exc.read()
    except OSError:
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if isinstance(payload, dict) and payload.get("port") == port and isinstance(payload.get("pid"), int):
        return int(payload["pid"])
    return None


def check_ports(config: DeployConfig, report: Report) -> None:
    """Worker ports of this machine's hosts must be free, or already served by workers."""
    local = [(host, port) for host, port in config.workers if port_state(host.address, port) != "not local"]
    for host, port in local:
        if port_state(host.address, port) != "in use":
            continue
        pid = running_worker(config, host.address, port)
        where = host_port(host.address, port)
        if pid is None:
            report.fail(f"ports: {where} is already in use by another program")
        else:
            report.ok(f"ports: {where} is served by a running worker (pid {pid})")
    listen_port = _listen_port(config.nginx.listen)
    if listen_port in {port for _host, port in local}:
        report.fail(f"ports: nginx listens on port {listen_port}, also a worker port on this machine")
    if local:
        report.ok(f"ports: {len(local)} worker port(s) on this machine checked")
    else:
        report.note("ports: no host of the deploy file has an address of this machine; ports not checked")


def _listen_port(listen: str) -> int | None:
    first = listen.split()[0] if listen.split() else ""
    port = first.rsplit(":", 1)[-1] if not first.endswith("]") else ""
    return int(port) if port.isdigit() else None


def check_server_access(config: DeployConfig, report: Report) -> None:
    """Who the workers believe and answer on their internal endpoints.

    rolling-restart and Prometheus read ``/-/health`` and ``/-/metrics`` at each
    host's address, which a host's own calls come from too; a worker answers
    them only to ``internal_allow``.
    """
    allowed = parse_networks(config.server_options["internal_allow"])
    for host in config.hosts:
        try:
            address = ipaddress.ip_address(host.address)
        except ValueError:
            continue
        if not any(address in network for network in allowed):
            report.fail(
                f"server: internal_allow does not include {host.address} ({host.label}): its workers "
                "would answer 403 to rolling-restart's health checks and to Prometheus there"
            )
    if not config.server_options["xheaders"]:
        report.note(
            "server: xheaders is off: the workers see nginx, not the client, as the remote "
            "address (set [server] xheaders = true)"
        )


# -- database -----------------------------------------------------------------------


def check_database(config: DeployConfig, database_url: str | None, report: Report) -> None:
    """The fleet's connections (+ headroom) against ``max_connections``."""
    url = database_url or config.environment.get("DATABASE_URL")
    if not url:
        report.note("database: no DATABASE_URL in [environment] and no --database-url: not checked")
        return
    if not url.startswith("mysql"):
        report.note(f"database: {url.split(':', 1)[0]} is not MySQL/MariaDB: not checked")
        return
    try:
        max_connections, max_user_connections = _limits(url)
    except Exception as exc:
        report.fail(f"database: cannot read max_connections ({exc}); pass --database-url, or --skip-database")
        return
    need = config.database_connections_needed
    sizes = " + ".join(f"{len(h.port_list)}" for h in config.hosts)
    arithmetic = (
        f"{len(config.workers)} workers ({sizes} over {len(config.hosts)} host(s)) x "
        f"{config.database.connections_per_worker} + {config.database.headroom} headroom = {need}"
    )
    if max_connections < need:
        report.fail(
            f"database: max_connections = {max_connections} is too small: {arithmetic}; set "
            f"max_connections = {need} or more (SET GLOBAL max_connections = {need}, and in the "
            "server's configuration file)"
        )
    else:
        report.ok(f"database: max_connections = {max_connections} fits {arithmetic}")
    if max_user_connections and max_user_connections < need - config.database.headroom:
        report.fail(
            f"database: max_user_connections = {max_user_connections} is below the "
            f"{need - config.database.headroom} connections of the workers; raise it or set 0"
        )


def _limits(url: str) -> tuple[int, int]:
    import dj_database_url
    import MySQLdb

    settings = dj_database_url.parse(url)
    args: dict[str, object] = {"user": settings.get("USER") or "", "connect_timeout": 5}
    if settings.get("PASSWORD"):
        args["passwd"] = settings["PASSWORD"]
    if settings.get("HOST"):
        args["host"] = settings["HOST"]
    if settings.get("PORT"):
        args["port"] = int(settings["PORT"])
    connection = MySQLdb.connect(**args)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT @@global.max_connections, @@global.max_user_connections")
        row = cursor.fetchone()
    finally:
        connection.close()
    return int(row[0]), int(row[1])
