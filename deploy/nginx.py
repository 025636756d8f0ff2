"""nginx: the rendered site file, a private nginx for ``nginx -t``, and reloads.

The site file holds one ``upstream`` listing every worker of every host and
one ``server`` block. It goes inside nginx's ``http {}`` block (Debian:
``/etc/nginx/sites-enabled/APP.conf``). Every number in it that has a
counterpart in the server (body limit, keep-alive and read timeouts) comes
from the deploy file's ``[server]`` table or the server's defaults.

Retries: ``proxy_next_upstream error timeout http_503`` sends a request to the
next worker when one cannot be reached, times out or answers 503 (queue full,
under ``--django_mode=thread``).
Without the ``non_idempotent`` flag nginx never resends a POST, PATCH or LOCK
that it has already sent to a worker, so a POST is never stored twice, and a
POST on a keep-alive connection that a draining worker closes fails instead
of being retried: that is why ``rolling-restart`` marks a port ``down`` here
before draining its worker (docs/deploy.md has the measurements).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path

from .config import DeployConfig, Host

#: (host label, port) pairs a rolling restart has taken out of the upstream.
Down = Collection[tuple[str, int]]


def seconds(value: float) -> str:
    """A duration as nginx writes it: ``60s``, or ``37500ms`` when not whole."""
    return f"{value:g}s" if float(value).is_integer() else f"{round(value * 1000)}ms"


def host_port(address: str, port: int) -> str:
    """``address:port``, with brackets around an IPv6 address."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(config: DeployConfig, header: str, down: Down = ()) -> str:
    """The site file; workers in ``down`` are marked ``down`` (kept, but sent nothing)."""
    return header + _upstream(config, down) + "\n" + _server(config)


def _upstream(config: DeployConfig, down: Down) -> str:
    nginx = config.nginx
    lines = [f"upstream {config.app} {{", "    least_conn;"]
    for host in config.hosts:
        lines += _servers(config, host, down)
    idle = float(config.server_options["idle_connection_timeout"])
    lines += [
        f"    keepalive {nginx.keepalive};",
        f"    keepalive_requests {nginx.keepalive_requests};",
        f"    # below the server's idle_connection_timeout ({idle:g}s): nginx closes an idle",
        "    # connection before the server does, so it never reuses one being closed",
        f"    keepalive_timeout {seconds(config.upstream_keepalive_timeout)};",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _servers(config: DeployConfig, host: Host, down: Down) -> list[str]:
    nginx = config.nginx
    lines = [f"    # host {host.label}"] if host.label != host.address else []
    for port in host.port_list:
        target = host_port(host.address, port)
        if (host.label, port) in down:
            lines.append(f"    server {target} down;  # marked down by deploy rolling-restart")
        else:
            lines.append(
                f"    server {target} max_fails={nginx.max_fails} fail_timeout={seconds(nginx.fail_timeout)};"
            )
    return lines


def _server(config: DeployConfig) -> str:
    nginx, paths = config.nginx, config.paths
    request_timeout = float(config.server_options["request_timeout"])
    tries = nginx.next_upstream_tries
    tls = ""
    if nginx.ssl_certificate and nginx.ssl_certificate_key:
        tls = (
            f"    ssl_certificate {_quote(nginx.ssl_certificate)};\n"
            f"    ssl_certificate_key {_quote(nginx.ssl_certificate_key)};\n"
        )
    return f"""server {{
    listen {nginx.listen};
    server_name {nginx.server_name};
{tls}
    # = the server's max_body_size: both refuse the same bodies with 413
    client_max_body_size {config.client_max_body_size};

    location ^~ {nginx.static_url} {{
        alias {_quote(paths.static_root.rstrip("/") + "/")};
    }}
    location ^~ {nginx.media_url} {{
        alias {_quote(paths.media_root.rstrip("/") + "/")};
        add_header X-Content-Type-Options nosniff;
    }}
    # The server's own endpoints (health, metrics) are not public: operators and
    # Prometheus call each worker directly.
    location ^~ {config.internal_prefix} {{
        return 404;
    }}
    location / {{
        proxy_pass http://{config.app};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_connect_timeout {seconds(nginx.connect_timeout)};
        proxy_send_timeout {seconds(nginx.send_timeout)};
        # above the server's request_timeout ({request_timeout:g}s)
        proxy_read_timeout {seconds(config.proxy_read_timeout)};
        # Another worker gets the request when one is unreachable, times out or is
        # full (503). nginx's default, kept here: a POST/PATCH/LOCK already sent to a
        # worker is never sent again (no "non_idempotent"), so it cannot run twice.
        proxy_next_upstream error timeout http_503;
        proxy_next_upstream_tries {tries};
    }}
}}
"""


# -- a private nginx ----------------------------------------------------------------


def binary() -> str | None:
    """The nginx program (Debian installs it in /usr/sbin), or None."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def standalone_conf(prefix: Path, site: Path, worker_processes: int = 1) -> str:
    """A main nginx.conf that includes ``site`` and keeps every file inside ``prefix``.

    Used by ``deploy check`` (``nginx -t``) and by the tests (a real nginx on a
    free port): pid file, logs and temp directories are its own, so it runs
    next to a system nginx without touching it, as root or not.
    """
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temp dirs
    mime = "/etc/nginx/mime.types"
    types = f"    include {mime};\n" if os.path.exists(mime) else ""
    temp = "".join(
        f"    {name}_temp_path {prefix / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "# A private nginx written by the deploy package (check, tests).\n"
        f"{user}worker_processes {worker_processes};\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"{types}"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp}"
        f"    include {site};\n"
        "}\n"
    )


def command(nginx: str, prefix: Path, *args: str) -> list[str]:
    """An nginx command line for the private nginx in ``prefix`` (conf: prefix/nginx.conf)."""
    return [
        nginx,
        "-p",
        str(prefix),
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "error.log"),
        *args,
    ]


def write_standalone(prefix: Path, site: Path, worker_processes: int = 1) -> Path:
    """Write the private nginx.conf into ``prefix``; return its path."""
    prefix.mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(standalone_conf(prefix, site, worker_processes))
    return path


def validate_site(nginx: str, site: Path, prefix: Path) -> tuple[bool, str]:
    """``nginx -t`` on ``site`` inside a private prefix: (ok, nginx's output)."""
    write_standalone(prefix, site)
    result = subprocess.run(command(nginx, prefix, "-t"), capture_output=True, text=True, timeout=30)
    return result.returncode == 0, (result.stderr + result.stdout).strip()
