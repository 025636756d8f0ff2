"""Every server setting, declared once.

Each :class:`Setting` carries its name, type, default and help text; from this
table come the command-line flags (``tornado.options``), ``--config`` files,
``python server.py --help`` and docs/configuration.md (``make docs``), so the
three cannot drift apart.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from tornado.options import Error as OptionsError
from tornado.options import OptionParser

GROUP = "server"


@dataclass(frozen=True)
class Setting:
    """One server option: flag ``--name``, the same name in a ``--config`` file."""

    name: str
    type: type
    default: Any
    help: str
    metavar: str | None = None
    validate: Callable[[Any], str | None] | None = None


def _positive(value: Any) -> str | None:
    return None if value is None or value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value is None or value >= 0 else "must be >= 0"


def _port(value: int) -> str | None:
    return None if 0 < value < 65536 else "must be a TCP port (1-65535)"


def _prefix(value: str) -> str | None:
    if not (value.startswith("/") and value.endswith("/") and len(value) > 2):
        return "must start and end with '/' and name a path, e.g. /-/"
    return None


def _access_log_format(value: str) -> str | None:
    return None if value in ("combined", "json", "off") else "must be combined, json or off"


def _event_loop(value: str) -> str | None:
    return None if value in ("uvloop", "asyncio") else "must be uvloop or asyncio"


SETTINGS: tuple[Setting, ...] = (
    Setting("port", int, 8001, "TCP port to listen on (one worker per port)", "PORT", _port),
    Setting("address", str, "127.0.0.1", "address to bind; 0.0.0.0 or :: for all interfaces", "ADDR"),
    Setting(
        "settings",
        str,
        os.environ.get("DJANGO_SETTINGS_MODULE") or "conf.settings",
        "Django settings module (default: $DJANGO_SETTINGS_MODULE, else conf.settings)",
        "MODULE",
    ),
    Setting(
        "xheaders",
        bool,
        False,
        "trust X-Real-IP / X-Forwarded-For / X-Forwarded-Proto from the proxy in front",
    ),
    Setting(
        "max_body_size",
        int,
        10 * 1024 * 1024,
        "largest request body in bytes; larger ones get 413",
        "BYTES",
        _positive,
    ),
    Setting(
        "max_header_size",
        int,
        64 * 1024,
        "largest request line plus headers in bytes; larger ones get 400",
        "BYTES",
        _positive,
    ),
    Setting(
        "idle_connection_timeout",
        float,
        75.0,
        "seconds an idle keep-alive client connection is kept open",
        "SECONDS",
        _positive,
    ),
    Setting(
        "body_timeout",
        float,
        30.0,
        "seconds a client may take to send its request body (slow clients never "
        "reach the Django thread: bodies are read in full first)",
        "SECONDS",
        _positive,
    ),
    Setting(
        "graceful_timeout",
        float,
        30.0,
        "seconds a worker waits for in-flight requests after SIGTERM before exiting anyway",
        "SECONDS",
        _non_negative,
    ),
    Setting(
        "internal_prefix",
        str,
        "/-/",
        "URL prefix of the endpoints the server answers itself (health)",
        "PATH",
        _prefix,
    ),
    Setting(
        "health_timeout",
        float,
        2.0,
        "seconds /-/health waits for the database check before answering 503",
        "SECONDS",
        _positive,
    ),
    Setting(
        "access_log_format",
        str,
        "combined",
        "access log lines: combined (Apache-like, plus latency and port), json, or off",
        "FORMAT",
        _access_log_format,
    ),
    Setting(
        "event_loop",
        str,
        "uvloop",
        "asyncio event loop: uvloop (falls back to asyncio if not installed) or asyncio",
        "LOOP",
        _event_loop,
    ),
    Setting(
        "config",
        str,
        None,
        "read options from this file (Python syntax: name = value); flags given on "
        "the command line after --config override it",
        "FILE",
    ),
)


class ConfigError(Exception):
    """A setting has a bad value; the message names it."""


def make_parser() -> OptionParser:
    """A fresh tornado OptionParser holding every setting plus Tornado's logging flags."""
    parser = OptionParser()
    for s in SETTINGS:
        parser.define(s.name, default=s.default, type=s.type, help=s.help, metavar=s.metavar, group=GROUP)
    # Tornado's --logging, --log_file_prefix, --log_to_stderr, ... (group: logging)
    import tornado.log

    tornado.log.define_logging_options(parser)
    return parser


def parse(argv: list[str]) -> OptionParser:
    """Parse ``argv`` (including ``--config=FILE``) and validate every value."""
    parser = make_parser()
    parser.add_parse_callback(lambda: None)
    try:
        parser.parse_command_line(argv, final=False)
        if parser.config:
            if not os.path.isfile(parser.config):
                raise ConfigError(f"--config: no such file: {parser.config}")
            _check_config_keys(parser, parser.config)
            parser.parse_config_file(parser.config, final=False)
            # The command line wins over the file.
            parser.parse_command_line(argv, final=False)
    except OptionsError as exc:
        raise ConfigError(str(exc)) from exc
    for s in SETTINGS:
        value = getattr(parser, s.name)
        problem = s.validate(value) if s.validate else None
        if problem:
            raise ConfigError(f"--{s.name}={value!r}: {problem}")
    parser.run_parse_callbacks()
    return parser


def _check_config_keys(parser: OptionParser, path: str) -> None:
    """Refuse unknown names in a config file instead of silently ignoring them."""
    namespace: dict[str, Any] = {"__file__": os.path.abspath(path)}
    with open(path, "rb") as f:
        try:
            exec(compile(f.read(), path, "exec"), namespace, namespace)
        except Exception as exc:
            raise ConfigError(f"--config {path}: {exc}") from exc
    known = set(parser.as_dict())
    unknown = sorted(
        k for k in namespace if not k.startswith("_") and k.replace("-", "_") not in known
    )
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting(s): {', '.join(unknown)}")


def markdown() -> str:
    """The settings table for docs/configuration.md."""
    lines = [
        "| flag / config name | default | meaning |",
        "|---|---|---|",
    ]
    for s in SETTINGS:
        default = s.default
        if s.name == "settings":
            default = "$DJANGO_SETTINGS_MODULE or conf.settings"
        lines.append(f"| `--{s.name}` | `{default}` | {s.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
