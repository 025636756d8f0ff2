"""systemd: a template unit ``APP@.service`` (the instance is the port) and ``APP.target``.

The worker speaks sd_notify (appserver/systemd.py), so the unit is
``Type=notify``: ``systemctl start APP@8001`` returns once the worker serves,
and ``WatchdogSec`` restarts a worker whose IOLoop stops pinging. ``APP.target``
wants one instance per port of its host; ``systemctl start APP.target`` starts
them all, and each instance is ``PartOf`` it, so stopping the target stops them.

:func:`verify` runs ``systemd-analyze verify`` on the rendered units;
:class:`SystemdControl` drives ``systemctl`` for a rolling restart.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import DeployConfig, Host


def unit_name(config: DeployConfig, port: int | str) -> str:
    """``APP@PORT.service``."""
    return f"{config.app}@{port}.service"


def _specifiers(value: str) -> str:
    return value.replace("%", "%%")


def _exec_arg(value: str) -> str:
    value = _specifiers(value).replace("$", "$$")
    if any(c in value for c in ' "\\\t'):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _environment_line(name: str, value: str) -> str:
    escaped = _specifiers(f"{name}={value}").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{escaped}"'


def exec_start(config: DeployConfig, host: Host) -> str:
    """ExecStart= of the template: the worker on port ``%i``."""
    paths = config.paths
    args = [paths.python, paths.server_script, f"--config={config.config_path}"]
    return " ".join([*map(_exec_arg, args), "--port=%i", _exec_arg(f"--address={host.address}")])


def render_unit(config: DeployConfig, host: Host, header: str) -> str:
    """The template unit ``APP@.service`` for one host."""
    paths = config.paths
    systemd = config.systemd
    writable = [paths.log_dir, paths.media_root, *systemd.read_write_paths]
    watchdog = f"WatchdogSec={systemd.watchdog_sec:g}\n" if systemd.watchdog_sec else ""
    environment = "".join(_environment_line(k, v) + "\n" for k, v in config.environment.items())
    return f"""{header}[Unit]
Description={config.app} worker on port %i
PartOf={config.app}.target
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
User={config.user}
WorkingDirectory={_exec_arg(paths.code)}
{environment}ExecStart={exec_start(config, host)}
# SIGTERM drains the worker; SIGKILL (to the whole group) only after TimeoutStopSec,
# which is above the server's graceful_timeout ({config.graceful_timeout:g}s).
KillSignal=SIGTERM
KillMode=mixed
TimeoutStartSec={systemd.timeout_start_sec:g}
TimeoutStopSec={config.timeout_stop_sec}
{watchdog}Restart=on-failure
# A worker exits 0 on its own only when max_requests recycles it: start a fresh one.
# (A stop asked for with systemctl is never restarted.)
RestartForceExitStatus=0
RestartSec={systemd.restart_sec:g}
SyslogIdentifier={config.app}-%i

# Hardening: the worker writes only its logs and uploads.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={" ".join(_exec_arg(p) for p in writable)}
PrivateTmp=yes
ProtectHome=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy={config.app}.target
"""


def render_target(config: DeployConfig, host: Host, header: str) -> str:
    """``APP.target``: every worker of one host."""
    units = " ".join(unit_name(config, port) for port in host.port_list)
    return f"""{header}[Unit]
Description={config.app}: every worker on {host.label} (ports {host.ports})
Wants={units}

[Install]
WantedBy=multi-user.target
"""


def analyze_binary() -> str | None:
    """``systemd-analyze``, or None where systemd is not installed."""
    return shutil.which("systemd-analyze")


def home_problems(config: DeployConfig) -> list[str]:
    """Paths that ProtectHome=yes would hide from the workers."""
    paths = config.paths
    candidates = (paths.code, paths.virtualenv, config.config_path)
    hidden = [p for p in candidates if p.startswith(("/home/", "/root/"))]
    return [
        f"systemd: {p} is under /home or /root, hidden from the workers by ProtectHome=yes" for p in hidden
    ]


def verify(config: DeployConfig, host: Host, unit_dir: Path) -> tuple[list[str], list[str]]:
    """``systemd-analyze verify`` on every instance and the target: (problems, notes).

    verify fails on an ExecStart program that does not exist; where the
    virtualenv is not installed on this machine (checking a deploy for other
    hosts), the check runs on a copy whose program is this Python, and says so.
    """
    analyze = analyze_binary()
    if analyze is None:
        return [], ["systemd-analyze not found (systemd not installed): units not verified"]
    notes = []
    with tempfile.TemporaryDirectory(prefix="deploy-systemd-") as tmp:
        for unit in unit_dir.iterdir():
            text = unit.read_text()
            python = config.paths.python
            if not Path(python).exists():
                text = text.replace(
                    f"ExecStart={_exec_arg(python)} ", f"ExecStart={_exec_arg(sys.executable)} "
                )
                note = f"{python} does not exist here; ExecStart verified with {sys.executable} in its place"
                if note not in notes:
                    notes.append(note)
            (Path(tmp) / unit.name).write_text(text)
        targets = [str(Path(tmp) / unit_name(config, port)) for port in host.port_list]
        targets.append(str(Path(tmp) / f"{config.app}.target"))
        result = subprocess.run(
            [analyze, "verify", "--man=no", *targets], capture_output=True, text=True, timeout=60
        )
    output = (result.stdout + result.stderr).replace(tmp, str(unit_dir))
    ours = [line for line in output.splitlines() if config.app in line or str(unit_dir) in line]
    problems = [f"systemd-analyze: {line}" for line in dict.fromkeys(ours)]
    if result.returncode != 0 and not problems:
        problems.append(f"systemd-analyze verify exited {result.returncode}: {output.strip()}")
    return problems, notes


class SystemdControl:
    """Stop, start and inspect workers with ``systemctl``."""

    def __init__(self, config: DeployConfig, systemctl: str = "systemctl") -> None:
        self.config = config
        self.systemctl = systemctl

    def _run(self, *args: str) -> str:
        result = subprocess.run([self.systemctl, *args], capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"systemctl {' '.join(args)}: {result.stderr.strip() or result.returncode}")
        return result.stdout.strip()

    def pid(self, port: int) -> int | None:
        """MainPID of the port's unit, or None when it does not run."""
        value = self._run("show", "--property=MainPID", "--value", unit_name(self.config, port))
        return int(value) if value.isdigit() and int(value) else None

    def stop(self, port: int) -> None:
        """systemctl stop: SIGTERM, wait for the drain (up to TimeoutStopSec)."""
        self._run("stop", unit_name(self.config, port))

    def start(self, port: int) -> None:
        """systemctl start: returns once the worker has sent READY=1."""
        self._run("start", unit_name(self.config, port))
