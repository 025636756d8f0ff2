"""supervisor: one program per port in one group, checked and driven with supervisor's own code.

The rendered file goes into supervisord's include directory (Debian:
``/etc/supervisor/conf.d/APP.conf``). Each program runs
``server.py --config=<deploy file> --port=N``; supervisor stops it with
SIGTERM to its process group and waits ``stopwaitsecs`` (above the server's
graceful_timeout) before SIGKILL, and restarts it whenever it exits, including
the clean exit of a worker recycled by ``max_requests``.

:func:`parse_check` loads the file with supervisor's own parser;
:class:`SupervisorControl` stops and starts workers over supervisord's
XML-RPC interface (what ``supervisorctl`` uses).
"""

from __future__ import annotations

import shlex
import tempfile
import xmlrpc.client
from pathlib import Path
from typing import Any

from .config import DeployConfig, Host


class RenderError(ValueError):
    """A value cannot be written in supervisor's syntax."""


def program_name(config: DeployConfig, port: int) -> str:
    """``APP-PORT``; the full name for supervisorctl is ``APP:APP-PORT``."""
    return f"{config.app}-{port}"


def command(config: DeployConfig, host: Host, port: int) -> str:
    """The worker's command line."""
    paths = config.paths
    return shlex.join(
        [
            paths.python,
            paths.server_script,
            f"--config={config.config_path}",
            f"--port={port}",
            f"--address={host.address}",
        ]
    )


def _escape(value: str) -> str:
    return value.replace("%", "%%")  # supervisor expands %(name)s in every value


def environment(config: DeployConfig) -> str:
    """``KEY="value",...`` as supervisor's environment= parser reads it back."""
    pairs = []
    for name, value in config.environment.items():
        if '"' in value or value[:1] == "'" or value[-1:] == "'":
            raise RenderError(
                f"[environment] {name}: supervisor cannot express a value with a double quote "
                "or starting/ending with a single quote"
            )
        pairs.append(f'{name}="{_escape(value)}"')
    return ",".join(pairs)


def render(config: DeployConfig, host: Host, header: str) -> str:
    """The supervisor file for one host."""
    programs = [program_name(config, port) for port in host.port_list]
    sections = [f"{header}[group:{config.app}]\nprograms={','.join(programs)}\n"]
    env = environment(config)
    log_dir = config.paths.log_dir.rstrip("/")
    for port in host.port_list:
        name = program_name(config, port)
        lines = [
            f"[program:{name}]",
            f"command={_escape(command(config, host, port))}",
            f"directory={_escape(config.paths.code)}",
            f"user={config.user}",
            *([f"environment={env}"] if env else []),
            "autostart=true",
            "; restart after any exit: a clean exit 0 is a worker recycled by max_requests",
            "autorestart=true",
            f"startsecs={config.supervisor.startsecs}",
            f"startretries={config.supervisor.startretries}",
            "stopsignal=TERM",
            f"; above graceful_timeout ({config.graceful_timeout:g}s): SIGKILL only if draining hangs",
            f"stopwaitsecs={config.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_escape(log_dir)}/{name}.log",
            f"stdout_logfile_maxbytes={config.supervisor.logfile_maxbytes}",
            f"stdout_logfile_backups={config.supervisor.logfile_backups}",
        ]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def wrapper_conf(directory: Path, include: Path) -> str:
    """A supervisord.conf keeping socket, pid and log in ``directory`` and including ``include``."""
    return (
        "[supervisord]\n"
        f"logfile={directory / 'supervisord.log'}\n"
        f"pidfile={directory / 'supervisord.pid'}\n"
        f"childlogdir={directory}\n"
        "[unix_http_server]\n"
        f"file={directory / 'supervisor.sock'}\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        "[supervisorctl]\n"
        f"serverurl=unix://{directory / 'supervisor.sock'}\n"
        "[include]\n"
        f"files={include}\n"
    )


def parse_check(config: DeployConfig, host: Host, path: Path) -> list[str]:
    """Load ``path`` with supervisor's own parser; the problems found (empty: fine)."""
    from supervisor.options import ServerOptions

    with tempfile.TemporaryDirectory(prefix="deploy-supervisor-") as tmp:
        wrapper = Path(tmp) / "supervisord.conf"
        wrapper.write_text(wrapper_conf(Path(tmp), path))
        options = ServerOptions()
        options.configfile = str(wrapper)
        try:
            options.process_config(do_usage=False)
        except ValueError as exc:
            return [f"supervisor rejects {path}: {exc}"]
    problems = [f"supervisor: {message}" for message in options.parse_criticals + options.parse_warnings]
    groups = {group.name: group for group in options.process_group_configs}
    group = groups.get(config.app)
    if group is None:
        return [*problems, f"supervisor: no group {config.app!r} in {path}"]
    found = {p.name: p for p in group.process_configs}
    for port in host.port_list:
        name = program_name(config, port)
        program = found.get(name)
        if program is None:
            problems.append(f"supervisor: group {config.app} has no program {name}")
        elif program.stopwaitsecs <= config.graceful_timeout:
            problems.append(f"supervisor: {name} stopwaitsecs={program.stopwaitsecs} <= graceful_timeout")
    return problems


class SupervisorControl:
    """Stop, start and inspect workers through supervisord's XML-RPC interface."""

    def __init__(self, config: DeployConfig, conf: str | None = None, serverurl: str | None = None) -> None:
        from supervisor.options import ClientOptions
        from supervisor.xmlrpc import SupervisorTransport

        options = ClientOptions()
        args = ["-c", conf] if conf else []
        if serverurl:
            args += ["-s", serverurl]
        options.realize(args=args)
        self.serverurl = str(options.serverurl)
        transport = SupervisorTransport(options.username, options.password, self.serverurl)
        # The host part is ignored: the transport connects to serverurl.
        self.rpc: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        self.config = config

    def name(self, port: int) -> str:
        """supervisor's ``group:program`` name of a port's worker."""
        return f"{self.config.app}:{program_name(self.config, port)}"

    def pid(self, port: int) -> int | None:
        """The running worker's pid, or None."""
        info = self.rpc.supervisor.getProcessInfo(self.name(port))
        return int(info["pid"]) or None

    def stop(self, port: int) -> None:
        """SIGTERM and wait (supervisor waits up to stopwaitsecs)."""
        try:
            self.rpc.supervisor.stopProcess(self.name(port), True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def start(self, port: int) -> None:
        """Start and wait until supervisor considers it running (startsecs)."""
        name = self.name(port)
        try:
            self.rpc.supervisor.startProcess(name, True)
        except xmlrpc.client.Fault as fault:
            log = f"{self.config.paths.log_dir.rstrip('/')}/{program_name(self.config, port)}.log"
            raise RuntimeError(
                f"supervisor could not start {name}: {fault.faultString} (its log: {log})"
            ) from None
