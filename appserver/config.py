"""Every server setting, declared once.

Each :class:`Setting` carries its name, type, default and help text; from this
table come the command-line flags (``tornado.options``), ``--config`` files,
``python server.py --help`` and docs/server-options.md (``make docs``), so the
three cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def _one_of(*choices: str) -> Callable[[str], str | None]:
    """A validator accepting exactly ``choices`` ("must be a, b or c" otherwise)."""
    problem = f"must be {', '.join(choices[:-1])} or {choices[-1]}"
    return lambda value: None if value in choices else problem


def _ports(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_ports(value)
    except ValueError as exc:
        return str(exc)
    return None


def _networks(value: str) -> str | None:
    try:
        parse_networks(value)
    except ValueError as exc:
        return str(exc)
    return None


def parse_ports(spec: str) -> list[int]:
    """``"8001-8004"`` or ``"8001,8003"`` (or a mix) as a sorted list of distinct ports."""
    ports: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"{part!r} is not a port or a range like 8001-8004")
        first, last = int(low), int(high) if sep else int(low)
        if first > last:
            raise ValueError(f"range {part!r} runs backwards")
        ports.extend(range(first, last + 1))
    if not ports:
        raise ValueError("names no port")
    bad = [p for p in ports if not 0 < p < 65536]
    if bad:
        raise ValueError(f"{bad[0]} is not a TCP port (1-65535)")
    duplicates = sorted({p for p in ports if ports.count(p) > 1})
    if duplicates:
        raise ValueError(f"port {duplicates[0]} is named twice")
    return sorted(ports)


def parse_networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A comma-separated list of addresses or CIDR networks."""
    networks = []
    for part in spec.split(","):
        part = part.strip()
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or network") from None
    return networks


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
        "largest request line plus headers in bytes; larger ones get 431",
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
        "trusted_proxies",
        str,
        "127.0.0.1/8,::1",
        "with --xheaders: only clients at these addresses/networks may set the forwarded "
        "headers; from anyone else they are ignored",
        "NETS",
        _networks,
    ),
    Setting(
        "max_queue",
        int,
        64,
        "requests allowed to wait for the Django thread; beyond that: 503 with Retry-After "
        "(--django_mode=thread only)",
        "N",
        _positive,
    ),
    Setting(
        "request_timeout",
        float,
        30.0,
        "seconds after which a running request's Django stack is logged and /-/health "
        "reports the worker as stuck (0: never); the request itself is not interrupted",
        "SECONDS",
        _non_negative,
    ),
    Setting(
        "max_requests",
        int,
        0,
        "drain and exit after this many requests, so the supervisor starts a fresh process (0: never)",
        "N",
        _non_negative,
    ),
    Setting(
        "max_requests_jitter",
        int,
        0,
        "add a random 0..N to --max_requests per worker, so workers do not recycle together",
        "N",
        _non_negative,
    ),
    Setting(
        "internal_prefix",
        str,
        "/-/",
        "URL prefix of the endpoints the server answers itself (health, metrics)",
        "PATH",
        _prefix,
    ),
    Setting(
        "internal_allow",
        str,
        "127.0.0.1/8,::1",
        "client addresses allowed on the internal endpoints (after --xheaders); others "
        "get 403; 0.0.0.0/0,::/0 allows everyone",
        "NETS",
        _networks,
    ),
    Setting(
        "health_timeout",
        float,
        2.0,
        "seconds /-/health waits for the database check before answering 503 (--django_mode=thread only)",
        "SECONDS",
        _positive,
    ),
    Setting(
        "log_format",
        str,
        "combined",
        "access log lines: combined (Apache-like, plus latency and port), json (every "
        "log line as one JSON object), or off (no access log)",
        "FORMAT",
        _one_of("combined", "json", "off"),
    ),
    Setting(
        "event_loop",
        str,
        "uvloop",
        "asyncio event loop: uvloop (falls back to asyncio if not installed) or asyncio",
        "LOOP",
        _one_of("uvloop", "asyncio"),
    ),
    Setting(
        "http",
        str,
        "httptools",
        "HTTP/1.1 implementation: httptools (llhttp's C parser on the event loop, the fast "
        "default) or tornado (Tornado's own HTTP1Connection, about 200 µs more CPU per request)",
        "IMPL",
        _one_of("httptools", "tornado"),
    ),
    Setting(
        "django_mode",
        str,
        "inline",
        "where Django runs: inline (on the IOLoop thread, the classic single-threaded recipe; "
        "the least CPU per request, but /-/health and /-/metrics wait for a running request and "
        "--max_queue has no effect) or thread (a Django thread of its own; the IOLoop stays free "
        "to answer /-/health, queue and refuse requests while a request runs); see the README, "
        "'Where Django runs'",
        "MODE",
        _one_of("inline", "thread"),
    ),
    Setting(
        "ports",
        str,
        None,
        "run one worker per port and supervise them, e.g. 8001-8004 or 8001,8003 "
        "(instead of --port); HUP restarts them one port at a time",
        "LIST",
        _ports,
    ),
    Setting(
        "fd",
        int,
        None,
        "serve on this inherited listening socket instead of binding --port (used by the --ports launcher)",
        "FD",
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
            if parser.config.endswith(".toml"):
                _apply_toml(parser, parser.config)
            else:
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


def _apply_toml(parser: OptionParser, path: str) -> None:
    """Take the ``[server]`` table of a deploy file (see docs/deploy.md) as options."""
    import tomllib

    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from exc
    table = document.get("server", {})
    if not isinstance(table, dict):
        raise ConfigError(f"--config {path}: [server] must be a table")
    known = {s.name: s for s in SETTINGS}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known or name in ("config", "fd"):
            raise ConfigError(f"--config {path}: unknown setting in [server]: {key}")
        wanted = known[name].type
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise ConfigError(f"--config {path}: [server] {key} = {value!r}: expected {wanted.__name__}")
        setattr(parser, name, value)


def _check_config_keys(parser: OptionParser, path: str) -> None:
    """Refuse unknown names in a config file instead of silently ignoring them."""
    namespace: dict[str, Any] = {"__file__": os.path.abspath(path)}
    with open(path, "rb") as f:
        try:
            exec(compile(f.read(), path, "exec"), namespace, namespace)
        except Exception as exc:
            raise ConfigError(f"--config {path}: {exc}") from exc
    known = set(parser.as_dict())
    unknown = sorted(k for k in namespace if not k.startswith("_") and k.replace("-", "_") not in known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting(s): {', '.join(unknown)}")


def markdown() -> str:
    """docs/server-options.md, generated from :data:`SETTINGS` (``make docs``)."""
    lines = [
        "# server.py options",
        "",
        "Generated from `appserver/config.py` by `make docs`; a test fails when this file",
        "is out of date. Every option is a flag (`--name=value`; `--name-with-dashes` works",
        "too) and can also be set in a `--config` file, which is Python syntax:",
        "",
        "```python",
        "# /etc/myapp/server.conf",
        'address = "127.0.0.1"',
        "max_body_size = 20 * 1024 * 1024",
        "graceful_timeout = 20.0",
        "```",
        "",
        "A deploy file (`*.toml`, see [deploy.md](deploy.md)) works too: its `[server]`",
        "table holds the same names, so nginx, supervisor, systemd and the server read",
        "one set of numbers. Flags given on the command line win over the file; an",
        "unknown name in the file is an error. `python server.py --help` prints the",
        "same list.",
        "",
        "## Server",
        "",
        "| flag / config name | default | meaning |",
        "|---|---|---|",
    ]
    for s in SETTINGS:
        default = s.default
        if s.name == "settings":
            default = "$DJANGO_SETTINGS_MODULE or conf.settings"
        lines.append(f"| `--{s.name}` | `{default}` | {s.help} |")
    lines += [
        "",
        "## Logging (Tornado's own flags)",
        "",
        "| flag | default | meaning |",
        "|---|---|---|",
    ]
    parser = make_parser()
    for name, option in sorted(parser._options.items()):
        if option.group_name != GROUP and name != "help":
            lines.append(f"| `--{option.name}` | `{option.default}` | {option.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
