"""The deploy file: one TOML file that nginx, supervisor, systemd and server.py all follow.

:func:`load` reads and validates it into a :class:`DeployConfig`. Every table
is a dataclass below whose fields are the table's keys, each declared once
with its default and documentation (docs/deploy.md is generated from them:
``python -m deploy docs``). The ``[server]`` table holds server.py options;
their defaults and validation come from :data:`appserver.config.SETTINGS`,
through the same parser server.py uses for ``--config``, so no default is
typed twice.

Values that must agree between the generated files (nginx's body limit and
the server's, stop timeouts and the graceful timeout, ...) are *derived* when
not given; when given, they are checked against each other and a mismatch is
an error naming both keys. An unknown key anywhere is an error naming it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appserver.config import ConfigError as ServerConfigError
from appserver.config import parse as parse_server_options
from appserver.config import parse_ports

#: nginx keeps an idle upstream connection for this fraction of the server's
#: idle_connection_timeout, so the server never closes a connection nginx is
#: about to reuse (75 s on the server gives nginx's own default of 60 s).
KEEPALIVE_FRACTION = 0.8
#: nginx waits this much longer than request_timeout for a response, so a slow
#: request is logged by the server (with its stack) before nginx gives up on it.
READ_TIMEOUT_MARGIN = 30.0
#: nginx's own proxy_read_timeout, used when request_timeout is 0 (off).
NGINX_READ_TIMEOUT = 60.0
#: supervisor / systemd wait this much longer than graceful_timeout before
#: SIGKILL: after draining, a worker still closes its database connection.
STOP_MARGIN = 5.0
#: [server] keys that the deploy file sets per host and port instead.
PER_WORKER_KEYS = {
    "port": "set per worker from [[hosts]] ports",
    "ports": "each port is its own supervised process; list them in [[hosts]] ports",
    "address": "each worker binds its host's address from [[hosts]] address",
}

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DNS_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DeployConfigError(Exception):
    """The deploy file is invalid; :attr:`problems` lists every problem, one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class _Required:
    """Marker default of a key that must be given."""

    def __repr__(self) -> str:
        return "(required)"


REQUIRED: Any = _Required()


def key(default: Any, doc: str, *, derived: str | None = None) -> Any:
    """Declare one key of a table: its default (None plus ``derived`` when computed) and its doc."""
    return field(default=default, metadata={"doc": doc, "derived": derived})


# -- the tables ---------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One ``[[hosts]]`` entry: a machine running one worker per port."""

    address: str = key(REQUIRED, "address nginx connects to; the workers bind it (IPv4, IPv6 or name)")
    ports: str = key(REQUIRED, 'worker ports: "8001-8004", "8001,8003" or a single port number')
    name: str | None = key(None, "name in generated paths and labels", derived="address")

    @property
    def label(self) -> str:
        """The host's name, or its address when it has none."""
        return self.name or self.address

    @property
    def port_list(self) -> list[int]:
        """The ports as a sorted list (validated at load time)."""
        return parse_ports(str(self.ports))


@dataclass(frozen=True)
class Paths:
    """``[paths]``: where things live on every host (absolute paths)."""

    code: str = key(REQUIRED, "project directory holding server.py (working directory of the workers)")
    virtualenv: str = key(REQUIRED, "virtualenv whose bin/python runs server.py")
    static_root: str = key(REQUIRED, "served by nginx at [nginx] static_url (collectstatic's STATIC_ROOT)")
    media_root: str = key(REQUIRED, "served by nginx at [nginx] media_url (uploads; writable by the workers)")
    log_dir: str = key(REQUIRED, "per-port worker logs (supervisor); writable by the workers")
    config: str | None = key(
        None,
        "where this deploy file is installed on the hosts; the workers run server.py --config=<this>",
        derived="the absolute path of the file given to the command",
    )

    @property
    def python(self) -> str:
        """The interpreter that runs the workers."""
        return f"{self.virtualenv.rstrip('/')}/bin/python"

    @property
    def server_script(self) -> str:
        """server.py inside the code directory."""
        return f"{self.code.rstrip('/')}/server.py"


@dataclass(frozen=True)
class Nginx:
    """``[nginx]``: the reverse proxy in front of every worker."""

    listen: str = key("80", 'nginx "listen" parameters, e.g. "80", "127.0.0.1:8080"')
    server_name: str = key("_", "nginx server_name (space-separated names)")
    ssl_certificate: str | None = key(
        None, 'certificate file for HTTPS (with listen = "443 ssl"); unset: no TLS directives'
    )
    ssl_certificate_key: str | None = key(None, "private key file of ssl_certificate")
    static_url: str = key("/static/", "URL prefix served from [paths] static_root (Django's STATIC_URL)")
    media_url: str = key("/media/", "URL prefix served from [paths] media_root (Django's MEDIA_URL)")
    keepalive: int = key(16, "idle connections to the workers kept open per nginx worker process")
    keepalive_requests: int = key(1000, "requests sent over one upstream connection before nginx closes it")
    keepalive_timeout: float | None = key(
        None,
        "seconds nginx keeps an idle upstream connection; must be below the server's "
        "idle_connection_timeout, so nginx never reuses a connection the server is closing",
        derived=f"{KEEPALIVE_FRACTION} x [server] idle_connection_timeout",
    )
    max_fails: int = key(3, "failed attempts within fail_timeout that take a worker out of rotation")
    fail_timeout: float = key(10.0, "seconds for max_fails, and how long a failed worker stays out")
    connect_timeout: float = key(5.0, "seconds to connect to a worker before trying the next one")
    read_timeout: float | None = key(
        None,
        "seconds nginx waits for a worker's response; must be above the server's request_timeout",
        derived=f"[server] request_timeout + {READ_TIMEOUT_MARGIN:g} ({NGINX_READ_TIMEOUT:g} when it is 0)",
    )
    send_timeout: float = key(60.0, "seconds between two writes of the request to a worker")
    next_upstream_tries: int = key(3, "at most this many workers are tried for one request (0: no limit)")
    client_max_body_size: int | None = key(
        None,
        "largest request body nginx accepts, in bytes; must equal the server's max_body_size",
        derived="[server] max_body_size",
    )
    conf_path: str | None = key(
        None,
        "where the rendered nginx file is installed; rolling-restart --mark-down rewrites it there "
        "to take the port it restarts out of nginx",
    )
    reload_command: str = key(
        "nginx -s reload", "what rolling-restart --mark-down runs after rewriting conf_path"
    )


@dataclass(frozen=True)
class Supervisor:
    """``[supervisor]``: one program per port, all in one group named after the app."""

    stopwaitsecs: int | None = key(
        None,
        "seconds supervisor waits after SIGTERM before SIGKILL; must be above graceful_timeout",
        derived=f"[server] graceful_timeout + {STOP_MARGIN:g}, rounded up",
    )
    startsecs: int = key(2, "seconds a worker must stay up to count as started")
    startretries: int = key(3, "start attempts before supervisor gives up on a worker")
    logfile_maxbytes: str = key("50MB", "size at which a worker's log is rotated")
    logfile_backups: int = key(10, "rotated logs kept per worker")


@dataclass(frozen=True)
class Systemd:
    """``[systemd]``: a template unit ``APP@.service`` (instance = port) and ``APP.target``."""

    watchdog_sec: float = key(30.0, "WatchdogSec: restart a worker whose IOLoop stops pinging (0: off)")
    timeout_start_sec: float = key(60.0, "TimeoutStartSec: time to load Django and report READY")
    timeout_stop_sec: int | None = key(
        None,
        "TimeoutStopSec; must be above graceful_timeout",
        derived=f"[server] graceful_timeout + {STOP_MARGIN:g}, rounded up",
    )
    restart_sec: float = key(1.0, "RestartSec: pause before restarting a failed worker")
    read_write_paths: tuple[str, ...] = key(
        (), "more writable paths besides log_dir and media_root (ProtectSystem=strict)"
    )


@dataclass(frozen=True)
class Prometheus:
    """``[prometheus]``: the generated scrape configuration."""

    scrape_interval: str = key("15s", "scrape_interval of the job")


@dataclass(frozen=True)
class Database:
    """``[database]``: connection arithmetic checked against MySQL's max_connections."""

    connections_per_worker: int = key(
        1, "database connections one worker holds (djpool: size + max_overflow, per alias)"
    )
    headroom: int = key(10, "connections kept free for migrations, admin shells, cron jobs, monitoring")


TABLES: dict[str, type] = {
    "paths": Paths,
    "nginx": Nginx,
    "supervisor": Supervisor,
    "systemd": Systemd,
    "prometheus": Prometheus,
    "database": Database,
}
TOP_LEVEL_DOCS = {
    "app": "name of the application: nginx upstream, supervisor group, systemd unit APP@.service (required)",
    "user": "system user the workers run as (required)",
    "hosts": "array of tables [[hosts]], at least one",
    "environment": "environment variables of every worker, e.g. DATABASE_URL, DJANGO_SETTINGS_MODULE",
    "server": "server.py options (docs/server-options.md); their defaults are the server's own",
}


@dataclass(frozen=True)
class DeployConfig:
    """A validated deploy file, with the values derived from it."""

    source: Path
    app: str
    user: str
    paths: Paths
    hosts: tuple[Host, ...]
    environment: dict[str, str]
    nginx: Nginx
    supervisor: Supervisor
    systemd: Systemd
    prometheus: Prometheus
    database: Database
    #: The ``[server]`` table as written (only the keys given).
    server: dict[str, Any]
    #: Every server.py option as a worker will see it: SETTINGS defaults plus ``[server]``.
    server_options: dict[str, Any]

    # -- derived values (see the constants at the top of this module) --------------

    @property
    def config_path(self) -> str:
        """The deploy file's path on the hosts (what ``--config=`` names)."""
        return self.paths.config or str(self.source)

    @property
    def internal_prefix(self) -> str:
        """The server's prefix of health and metrics, e.g. ``/-/``."""
        return str(self.server_options["internal_prefix"])

    @property
    def client_max_body_size(self) -> int:
        """nginx's body limit: the server's max_body_size."""
        return int(self.server_options["max_body_size"])

    @property
    def upstream_keepalive_timeout(self) -> float:
        """Seconds nginx keeps an idle upstream connection."""
        if self.nginx.keepalive_timeout is not None:
            return self.nginx.keepalive_timeout
        return KEEPALIVE_FRACTION * float(self.server_options["idle_connection_timeout"])

    @property
    def proxy_read_timeout(self) -> float:
        """Seconds nginx waits for a response."""
        if self.nginx.read_timeout is not None:
            return self.nginx.read_timeout
        request_timeout = float(self.server_options["request_timeout"])
        return request_timeout + READ_TIMEOUT_MARGIN if request_timeout else NGINX_READ_TIMEOUT

    @property
    def graceful_timeout(self) -> float:
        """The server's drain time on SIGTERM."""
        return float(self.server_options["graceful_timeout"])

    @property
    def stopwaitsecs(self) -> int:
        """supervisor's wait before SIGKILL."""
        if self.supervisor.stopwaitsecs is not None:
            return self.supervisor.stopwaitsecs
        return math.ceil(self.graceful_timeout + STOP_MARGIN)

    @property
    def timeout_stop_sec(self) -> int:
        """systemd's wait before SIGKILL."""
        if self.systemd.timeout_stop_sec is not None:
            return self.systemd.timeout_stop_sec
        return math.ceil(self.graceful_timeout + STOP_MARGIN)

    @property
    def workers(self) -> list[tuple[Host, int]]:
        """Every (host, port) pair, in file order."""
        return [(host, port) for host in self.hosts for port in host.port_list]

    @property
    def database_connections_needed(self) -> int:
        """Connections the fleet holds at most, plus the headroom."""
        return len(self.workers) * self.database.connections_per_worker + self.database.headroom


# -- reading ------------------------------------------------------------------------


def load(path: str | Path) -> DeployConfig:
    """Read and validate a deploy file; raise :class:`DeployConfigError` listing every problem."""
    source = Path(path).resolve()
    try:
        with open(source, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise DeployConfigError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise DeployConfigError(str(path), [f"not valid TOML: {exc}"]) from exc
    problems: list[str] = []
    config = _build(source, document, problems)
    if config is not None:
        problems += consistency_problems(config)
    if problems or config is None:
        raise DeployConfigError(str(path), problems)
    return config


def _build(source: Path, document: dict[str, Any], problems: list[str]) -> DeployConfig | None:
    known = {*TOP_LEVEL_DOCS, *TABLES}
    for name in document:
        if name not in known:
            problems.append(f"unknown key {name!r} at the top level (known: {', '.join(sorted(known))})")
    app = _top_string(document, "app", problems)
    if app is not None and not _NAME.match(app):
        problems.append(f"app = {app!r}: use lowercase letters, digits, '-' and '_', starting with a letter")
    user = _top_string(document, "user", problems)
    tables = {
        name: _table(cls, document.get(name, {}), f"[{name}]", problems) for name, cls in TABLES.items()
    }
    hosts = _hosts(document.get("hosts"), problems)
    environment = _environment(document.get("environment", {}), problems)
    server, server_options = _server(source, document.get("server", {}), problems)
    if problems or app is None or user is None or None in tables.values():
        return None
    return DeployConfig(
        source=source,
        app=app,
        user=user,
        hosts=hosts,
        environment=environment,
        server=server,
        server_options=server_options,
        **tables,  # type: ignore[arg-type]
    )


def _top_string(document: dict[str, Any], name: str, problems: list[str]) -> str | None:
    value = document.get(name)
    if value is None:
        problems.append(f"missing key {name!r}: {TOP_LEVEL_DOCS[name]}")
        return None
    if not isinstance(value, str) or not value:
        problems.append(f"{name} = {value!r}: expected a non-empty string")
        return None
    return value


def _table(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from a TOML table, reporting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        problems.append(f"{where} must be a table")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    before = len(problems)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in fields:
            problems.append(f"unknown key {name!r} in {where} (known: {', '.join(fields)})")
            continue
        converted, problem = _convert(value, hints[name])
        if problem:
            problems.append(f"{where} {name} = {value!r}: expected {problem}")
        else:
            values[name] = converted
    for name, f in fields.items():
        if f.default is REQUIRED and name not in values and name not in raw:
            problems.append(f"missing key {name!r} in {where}: {f.metadata['doc']}")
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            problems.append(f"{where} {name} = {value!r}: must be >= 0")
    if len(problems) > before:
        return None
    return cls(**values)


def _convert(value: Any, hint: Any) -> tuple[Any, str | None]:
    """``value`` as type ``hint`` (int → float allowed), or the name of the expected type."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    wanted = [t for t in options if t is not type(None)]
    for t in wanted:
        if typing.get_origin(t) is tuple:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value), None
        elif t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        elif isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return value, None
    names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
    return None, " or ".join(names.get(t, "a list of strings") for t in wanted)


def _hosts(raw: Any, problems: list[str]) -> tuple[Host, ...]:
    if not raw:
        problems.append("missing [[hosts]]: at least one host with address and ports")
        return ()
    if not isinstance(raw, list):
        problems.append("hosts must be an array of tables: [[hosts]]")
        return ()
    hosts: list[Host] = []
    for i, entry in enumerate(raw):
        where = f"[[hosts]] #{i + 1}"
        if isinstance(entry, dict) and isinstance(entry.get("ports"), int):
            entry = {**entry, "ports": str(entry["ports"])}
        host = _table(Host, entry, where, problems)
        if host is None:
            continue
        try:
            host.port_list  # noqa: B018 - validates the ports
        except ValueError as exc:
            problems.append(f"{where} ports = {host.ports!r}: {exc}")
            continue
        if host.name is not None and not _HOST_NAME.match(host.name):
            problems.append(f"{where} name = {host.name!r}: use letters, digits, '.', '-' and '_'")
        if not _valid_address(host.address.strip("[]")):
            problems.append(f"{where} address = {host.address!r}: not an IP address or host name")
        hosts.append(Host(address=host.address.strip("[]"), ports=host.ports, name=host.name))
    return tuple(hosts)


def _valid_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return bool(_DNS_NAME.match(address))


def _environment(raw: Any, problems: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        problems.append('[environment] must be a table of NAME = "value"')
        return {}
    environment = {}
    for name, value in raw.items():
        if not _ENV_NAME.match(name):
            problems.append(f"[environment] {name!r}: not an environment variable name")
        elif not isinstance(value, str):
            problems.append(f"[environment] {name} = {value!r}: expected a string (quote it)")
        else:
            environment[name] = value
    return environment


def _server(source: Path, raw: Any, problems: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``[server]`` table as written, and the options server.py will run with."""
    if not isinstance(raw, dict):
        problems.append("[server] must be a table")
        return {}, {}
    written = {name.replace("-", "_"): value for name, value in raw.items()}
    for name, why in PER_WORKER_KEYS.items():
        if name in written:
            problems.append(f"[server] {name}: not allowed here: {why}")
    try:
        # Exactly what server.py --config=FILE does; --logging=none keeps logging untouched.
        options = parse_server_options(["server.py", f"--config={source}", "--logging=none"])
    except ServerConfigError as exc:
        problems.append(str(exc))
        return written, {}
    return written, {name: getattr(options, name) for name in options.as_dict()}


# -- consistency ----------------------------------------------------------------------


def consistency_problems(config: DeployConfig) -> list[str]:
    """Contradictions between explicitly given values, and colliding workers."""
    problems: list[str] = []
    options = config.server_options
    body = options["max_body_size"]
    given = config.nginx.client_max_body_size
    if given is not None and given != body:
        problems.append(
            f"[nginx] client_max_body_size = {given} differs from the server's max_body_size = {body}: "
            "one of them would refuse bodies the other accepts; remove the nginx key (it follows "
            "[server] max_body_size) or make them equal"
        )
    graceful = config.graceful_timeout
    for where, value in (
        ("[supervisor] stopwaitsecs", config.supervisor.stopwaitsecs),
        ("[systemd] timeout_stop_sec", config.systemd.timeout_stop_sec),
    ):
        if value is not None and value <= graceful:
            problems.append(
                f"{where} = {value} is not above the server's graceful_timeout = {graceful:g}: "
                "workers would be killed while draining"
            )
    idle = float(options["idle_connection_timeout"])
    keepalive = config.nginx.keepalive_timeout
    if keepalive is not None and keepalive >= idle:
        problems.append(
            f"[nginx] keepalive_timeout = {keepalive:g} is not below the server's "
            f"idle_connection_timeout = {idle:g}: nginx would reuse connections the server is closing"
        )
    request_timeout = float(options["request_timeout"])
    read_timeout = config.nginx.read_timeout
    if read_timeout is not None and request_timeout and read_timeout <= request_timeout:
        problems.append(
            f"[nginx] read_timeout = {read_timeout:g} is not above the server's request_timeout = "
            f"{request_timeout:g}: nginx would give up before the server reports the request as stuck"
        )
    settings = config.server.get("settings")
    env_settings = config.environment.get("DJANGO_SETTINGS_MODULE")
    if settings and env_settings and settings != env_settings:
        problems.append(
            f"[server] settings = {settings!r} differs from [environment] DJANGO_SETTINGS_MODULE = "
            f"{env_settings!r}; set only one"
        )
    if (config.nginx.ssl_certificate is None) != (config.nginx.ssl_certificate_key is None):
        problems.append("[nginx] ssl_certificate and ssl_certificate_key go together: set both or neither")
    for url in (config.nginx.static_url, config.nginx.media_url):
        if not (url.startswith("/") and url.endswith("/")):
            problems.append(f"[nginx] {url!r}: URL prefixes must start and end with '/'")
    problems += _collisions(config)
    return problems


def _collisions(config: DeployConfig) -> list[str]:
    problems = []
    seen: dict[tuple[str, int], str] = {}
    for i, host in enumerate(config.hosts):
        for port in host.port_list:
            where = f"[[hosts]] #{i + 1} ({host.label})"
            other = seen.setdefault((host.address, port), where)
            if other != where:
                problems.append(f"port {port} on {host.address} is listed twice: {other} and {where}")
    labels = [h.label for h in config.hosts]
    for label in sorted({x for x in labels if labels.count(x) > 1}):
        problems.append(f"host name {label!r} is used by more than one [[hosts]] entry")
    return problems
