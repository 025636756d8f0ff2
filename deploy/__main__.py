"""Command line: ``python -m deploy {render,check,rolling-restart,docs}`` (see docs/deploy.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import check, docs, render
from .config import DeployConfig, DeployConfigError, load


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "docs":
        return _docs(args)
    try:
        config = load(args.config)
    except DeployConfigError as exc:
        for problem in exc.problems:
            print(f"FAIL  {exc.source}: {problem}", file=sys.stderr)
        return 1
    handler = {"render": _render, "check": _check, "rolling-restart": _rolling_restart}[args.command]
    return handler(config, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sub = commands.add_parser("render", help="write nginx, supervisor, systemd and Prometheus files")
    sub.add_argument("--config", required=True, help="the deploy file (TOML)")
    sub.add_argument("--out", required=True, type=Path, help="output directory")

    sub = commands.add_parser("check", help="render into a temporary directory and check everything")
    sub.add_argument("--config", required=True, help="the deploy file (TOML)")
    sub.add_argument("--database-url", help="read max_connections here instead of [environment] DATABASE_URL")
    sub.add_argument("--skip-database", action="store_true", help="do not check max_connections")

    sub = commands.add_parser("rolling-restart", help="restart this host's workers one port at a time")
    sub.add_argument("--config", required=True, help="the deploy file (TOML)")
    sub.add_argument("--via", required=True, choices=("supervisor", "systemd"), help="the process manager")
    sub.add_argument("--supervisor-conf", help="supervisord.conf to read serverurl and credentials from")
    sub.add_argument("--serverurl", help="supervisord's URL, e.g. unix:///run/supervisor.sock")
    sub.add_argument(
        "--host", action="append", help="restart this [[hosts]] name (repeatable; default: this machine's)"
    )
    sub.add_argument(
        "--mark-down",
        action="store_true",
        help="take each port out of nginx ([nginx] conf_path, reload_command) before draining it, "
        "instead of waiting [nginx] fail_timeout between ports",
    )
    sub.add_argument(
        "--start-timeout",
        type=float,
        help="seconds a new worker has to become healthy (default: [systemd] timeout_start_sec)",
    )

    sub = commands.add_parser("docs", help="regenerate the key reference in docs/deploy.md")
    sub.add_argument(
        "--file", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
    )
    sub.add_argument("--check", action="store_true", help="exit 1 if the file is out of date instead")
    return parser


def _render(config: DeployConfig, args: argparse.Namespace) -> int:
    try:
        written = render.write(config, args.out)
    except ValueError as exc:
        print(f"FAIL  render: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def _check(config: DeployConfig, args: argparse.Namespace) -> int:
    return check.run(config, check.Report(), args.database_url, args.skip_database)


def _rolling_restart(config: DeployConfig, args: argparse.Namespace) -> int:
    from . import rolling
    from .supervisor import SupervisorControl
    from .systemd import SystemdControl

    if args.host:
        hosts = [h for h in config.hosts if h.label in args.host]
        unknown = set(args.host) - {h.label for h in hosts}
        if unknown:
            print(f"error: no [[hosts]] named {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
    else:
        hosts = [h for h in config.hosts if check.is_local(h.address)]
        if not hosts:
            print("error: no [[hosts]] address belongs to this machine; use --host", file=sys.stderr)
            return 2
    control: rolling.ProcessControl
    if args.via == "supervisor":
        control = SupervisorControl(config, args.supervisor_conf, args.serverurl)
    else:
        control = SystemdControl(config)
    marker = None
    if args.mark_down:
        if not config.nginx.conf_path:
            print(
                "error: --mark-down needs [nginx] conf_path: where the nginx file is installed",
                file=sys.stderr,
            )
            return 2
        marker = rolling.NginxMarker(config)
    timeout = args.start_timeout or config.systemd.timeout_start_sec
    try:
        return rolling.rolling_restart(config, control, hosts, marker, start_timeout=timeout)
    except rolling.RollingRestartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _docs(args: argparse.Namespace) -> int:
    current = args.file.read_text()
    start, end = current.index(docs.BEGIN), current.index(docs.END) + len(docs.END)
    if args.check:
        stale = current[start:end] != docs.reference()
        if stale:
            print(f"{args.file} is out of date: run python -m deploy docs", file=sys.stderr)
        return int(stale)
    print(f"{args.file}: {'updated' if docs.update(args.file) else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
