"""``make bench``: the whole stack on loopback, this server against the alternatives.

Topology, the same for every backend: wrk → nginx (1 worker, upstream
keepalive, config rendered by ``deploy``) → 2 backend processes (ports) →
MySQL/MariaDB, on the demo's ``GET /api/notes/<id>`` and ``POST /api/notes``.

Backends, all with the same Django project and settings apart from what is named:

* A: this server + djpool (the product);
* B: gunicorn sync, one worker per port, Django's MySQL backend, ``CONN_MAX_AGE=None``;
* C: this server with Django's own MySQL backend and ``CONN_MAX_AGE=0`` (Django's default).

Rounds alternate the backends, each round starting one later (A B C, B C A,
C A B, ...), so drift hits all alike.
Reported per backend: req/s, p50/p99 latency, backend CPU µs per request
(utime+stime from /proc over the measured window), server-side connections
opened during the window (the ``Connections`` status counter), errors; medians
over the rounds and ratios to B. Written to bench/results/latest.md and
latest.png. Nothing here checks a number against a target: that is for people
reading the report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402
    MariaDB,
    MySQLServer,
    free_port,
    migrate,
    server_from_url,
    wait_for,
)

RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
POST_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"text": "bench ' .. counter .. '"}')
end
"""


@dataclass
class Backend:
    """How to start one of the compared backends on two ports."""

    key: str
    label: str
    env: dict[str, str]
    kind: str  # "server" or "gunicorn"
    args: tuple[str, ...] = ()


BACKENDS = (
    Backend("A", "this server + djpool", {}, "server"),
    Backend(
        "B",
        "gunicorn sync, CONN_MAX_AGE=None",
        {"DATABASE_POOL": "0", "DATABASE_CONN_MAX_AGE": "none"},
        "gunicorn",
    ),
    Backend(
        "C",
        "this server, Django default (CONN_MAX_AGE=0)",
        {"DATABASE_POOL": "0", "DATABASE_CONN_MAX_AGE": "0"},
        "server",
    ),
    # Optional (--backends A,B,C,T): the product on Tornado's own HTTP/1.1 layer.
    Backend("T", "this server + djpool, --http=tornado", {}, "server", ("--http=tornado",)),
    # Optional (--backends A,B,C,D): the product with Django on a thread of its own.
    Backend("D", "this server + djpool, --django_mode=thread", {}, "server", ("--django_mode=thread",)),
)
DEFAULT_BACKENDS = "A,B,C"


@dataclass
class Sample:
    """One measured window."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    connections: int
    errors: int
    requests: int


@dataclass
class Result:
    """All samples of one backend on one endpoint."""

    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


# -- processes ------------------------------------------------------------------------


def stat_seconds(stat: Path) -> tuple[float, float]:
    """(user, system) CPU seconds from a ``/proc/<pid>[/task/<tid>]/stat`` file.

    Raises FileNotFoundError when the process or thread has gone.
    """
    fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (seconds)."""
    total = 0.0
    for pid in pids:
        try:
            total += sum(stat_seconds(Path(f"/proc/{pid}/stat")))
        except FileNotFoundError:
            continue
    return total


def children_of(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        return found
    for child in out:
        found += children_of(int(child))
    return found


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers below 500."""

    def answers() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status < 500)

    wait_for(answers, timeout, url, interval=0.1)


class Running:
    """A backend's two processes."""

    def __init__(
        self, backend: Backend, database_url: str, ports: list[int], log: Path, config_file: Path
    ) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "conf.settings",
            **backend.env,
        }
        env.pop("DJANGO_DEBUG", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = open(log, "ab")
        for port in ports:
            if backend.kind == "server":
                # The deploy file's [server] table, as supervisor/systemd would run it.
                args = [PYTHON, "server.py", f"--config={config_file}", f"--port={port}", *backend.args]
            else:
                args = [
                    PYTHON,
                    "-m",
                    "gunicorn",
                    "conf.wsgi:application",
                    "-b",
                    f"127.0.0.1:{port}",
                    "-w",
                    "1",
                    "-k",
                    "sync",
                    "--log-level",
                    "warning",
                    "--backlog",
                    "1024",
                ]
            self.procs.append(
                subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
            )
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/api/notes/1")

    def pids(self) -> list[int]:
        return [p for proc in self.procs for p in children_of(proc.pid)]

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.log.close()


@contextlib.contextmanager
def bench_database(url: str | None) -> Iterator[tuple[MySQLServer, str, int]]:
    """A migrated demo database with 100 notes: (server, its DATABASE_URL, a note's id).

    On ``url``'s server when given, else on a throwaway MariaDB of its own, whose
    Connections counter and CPU then see only the benchmark. Dropped afterwards.
    """
    own: MariaDB | None = None
    if url:
        mysql = server_from_url(url)
    else:
        own = MariaDB()
        own.start()
        mysql = own.server
    db = mysql.create_database()
    try:
        database_url = mysql.url(db)
        migrate(database_url, settings="conf.settings")
        conn = mysql.connect(db)
        conn.cursor().executemany(
            "INSERT INTO notes_note (text, created) VALUES (%s, NOW())", [(f"note {i}",) for i in range(100)]
        )
        conn.close()
        yield mysql, database_url, mysql.query("SELECT MIN(id) FROM notes_note", db=db)[0][0]
    finally:
        mysql.drop_database(db)
        if own is not None:
            own.destroy()


# -- nginx ------------------------------------------------------------------------------


class Nginx:
    """nginx in a temporary prefix, proxying to the backend ports; its site file is
    what ``python -m deploy render`` writes for a deploy file naming those ports."""

    def __init__(self, workdir: Path, ports: list[int]) -> None:
        from deploy import nginx as deploy_nginx
        from deploy.config import load
        from deploy.render import header

        self.port = free_port()
        self.prefix = workdir / "nginx"
        self.deploy_file = workdir / "deploy.toml"
        self.deploy_file.write_text(deploy_toml(workdir, self.port, ports))
        config = load(self.deploy_file)
        site = workdir / "site.conf"
        site.write_text(deploy_nginx.render(config, header(config)))
        deploy_nginx.write_standalone(self.prefix, site)
        binary = deploy_nginx.binary() or "nginx"
        self.proc = subprocess.Popen(
            deploy_nginx.command(binary, self.prefix, "-g", "daemon off;"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    log = (self.prefix / "error.log").read_text(errors="replace")
                    raise RuntimeError(f"nginx did not start: {log}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def deploy_toml(workdir: Path, listen: int, ports: list[int]) -> str:
    """The benchmark's deployment, as a user would write it (docs/deploy.md)."""
    return f"""
app = "bench"
user = "root"
[paths]
config = "{workdir}/deploy.toml"
code = "{ROOT}"
virtualenv = "{Path(sys.executable).parent.parent}"
static_root = "{workdir}/static"
media_root = "{workdir}/media"
log_dir = "{workdir}"
[[hosts]]
address = "127.0.0.1"
ports = "{",".join(map(str, ports))}"
[nginx]
listen = "127.0.0.1:{listen}"
server_name = "bench.invalid"
keepalive = 16
[server]
xheaders = true
"""


# -- load -------------------------------------------------------------------------------


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> tuple[float, float, float, int, int]:
    """req/s, p50 ms, p99 ms, errors, requests from ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\b", output, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        errors += sum(int(x) for x in m.groups())
    return rps, pct("50"), pct("99"), errors, requests


def run_wrk(url: str, seconds: float, connections: int, script: Path | None) -> str:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    if script is not None:
        args[1:1] = ["-s", str(script)]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout


def measure(
    running: Running, mysql: MySQLServer, url: str, seconds: float, connections: int, script: Path | None
) -> Sample:
    run_wrk(url, 1.0, connections, script)  # warm-up: connections made, caches filled
    pids = running.pids()
    cpu0, conn0 = cpu_seconds(pids), mysql.connections_counter()
    out = run_wrk(url, seconds, connections, script)
    cpu1, conn1 = cpu_seconds(pids), mysql.connections_counter()
    rps, p50, p99, errors, requests = parse_wrk(out)
    # The two counter reads are themselves connections; don't charge them to the backend.
    return Sample(rps, p50, p99, (cpu1 - cpu0) / max(requests, 1) * 1e6, conn1 - conn0 - 1, errors, requests)


# -- report -----------------------------------------------------------------------------


def report(
    results: dict[tuple[str, str], Result],
    args: argparse.Namespace,
    elapsed: float,
    backends: tuple[Backend, ...] = BACKENDS[:3],
) -> str:
    lines = [
        f"# Benchmark ({'quick' if args.quick else 'full'}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"wrk -c{args.connections} → nginx (1 worker, keepalive) → 2 backend processes → MySQL; "
        f"{args.rounds} rounds × {args.seconds:g} s per backend and endpoint, backends alternating; "
        f"medians. Took {elapsed:.0f} s. CPU is the backend processes' user+system time per request.",
        "",
    ]
    for endpoint in ("GET /api/notes/<id>", "POST /api/notes"):
        b_rps = results[("B", endpoint)].median("rps")
        b_cpu = results[("B", endpoint)].median("cpu_us")
        lines += [
            f"## {endpoint}",
            "",
            "| backend | req/s | × B | p50 ms | p99 ms | CPU µs/req | × B | new DB connections | errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for b in backends:
            r = results[(b.key, endpoint)]
            lines.append(
                f"| {b.key}: {b.label} | {r.median('rps'):.0f} | {r.median('rps') / b_rps:.2f} | "
                f"{r.median('p50_ms'):.2f} | {r.median('p99_ms'):.2f} | {r.median('cpu_us'):.0f} | "
                f"{r.median('cpu_us') / b_cpu:.2f} | {int(r.median('connections'))} | "
                f"{sum(s.errors for s in r.samples)} |"
            )
        a, base, c = results[("A", endpoint)], results[("B", endpoint)], results[("C", endpoint)]
        lines += [
            "",
            f"A/C throughput: {a.median('rps') / c.median('rps'):.2f}×",
            "",
            # The machine drifts between rounds; these show how far the ratios moved with it.
            "Per round, A/B: throughput "
            + ", ".join(f"{x.rps / y.rps:.2f}" for x, y in zip(a.samples, base.samples, strict=True))
            + "; CPU per request "
            + ", ".join(f"{x.cpu_us / y.cpu_us:.2f}" for x, y in zip(a.samples, base.samples, strict=True))
            + "; A/C throughput "
            + ", ".join(f"{x.rps / y.rps:.2f}" for x, y in zip(a.samples, c.samples, strict=True))
            + ".",
            "",
        ]
    return "\n".join(lines) + "\n"


def chart(
    results: dict[tuple[str, str], Result], path: Path, backends: tuple[Backend, ...] = BACKENDS[:3]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = ("GET /api/notes/<id>", "POST /api/notes")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"A": "#2a7ab0", "B": "#999999", "C": "#d08030", "T": "#8fbfe0", "D": "#1f5a3a"}
    for ax, metric, title in (
        (axes[0], "rps", "throughput (req/s, higher is better)"),
        (axes[1], "cpu_us", "backend CPU per request (µs, lower is better)"),
    ):
        width = 0.75 / len(backends)
        for i, b in enumerate(backends):
            values = [results[(b.key, e)].median(metric) for e in endpoints]
            bars = ax.bar(
                [x + (i - (len(backends) - 1) / 2) * width for x in range(len(endpoints))],
                values,
                width,
                label=f"{b.key}: {b.label}",
                color=colors[b.key],
            )
            ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks(range(len(endpoints)), endpoints)
        ax.set_title(title, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(backends), 3), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)


# -- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of 3 s (make bench-quick)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--backends",
        default=DEFAULT_BACKENDS,
        help="comma-separated backends to run; A, B and C are always included "
        "(T = this server on --http=tornado, D = this server with --django_mode=thread)",
    )
    parser.add_argument(
        "--database-url",
        help="use this MySQL server (a database is created and dropped there) instead of a "
        "throwaway MariaDB; its global Connections counter must not be shared with other clients",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3.0
    wanted = {k.strip().upper() for k in args.backends.split(",") if k.strip()} | {"A", "B", "C"}
    unknown = wanted - {b.key for b in BACKENDS}
    if unknown:
        known = ", ".join(b.key for b in BACKENDS)
        parser.error(f"--backends: unknown backend(s) {', '.join(sorted(unknown))} (known: {known})")
    backends = tuple(b for b in BACKENDS if b.key in wanted)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-", ignore_cleanup_errors=True) as tmp,
        bench_database(args.database_url) as (mysql, database_url, note_id),
    ):
        workdir = Path(tmp)
        script = workdir / "post.lua"
        script.write_text(POST_LUA)
        ports = [free_port(), free_port()]
        nginx = Nginx(workdir, ports)
        results: dict[tuple[str, str], Result] = {}
        try:
            for round_no in range(1, args.rounds + 1):
                # Each round starts one backend later (A B C, B C A, C A B): a machine
                # that drifts within a round then favours none of them.
                shift = (round_no - 1) % len(backends)
                for backend in backends[shift:] + backends[:shift]:
                    running = Running(
                        backend, database_url, ports, workdir / f"{backend.key}.log", nginx.deploy_file
                    )
                    try:
                        for endpoint, path, lua in (
                            ("GET /api/notes/<id>", f"/api/notes/{note_id}", None),
                            ("POST /api/notes", "/api/notes", script),
                        ):
                            sample = measure(
                                running,
                                mysql,
                                f"http://127.0.0.1:{nginx.port}{path}",
                                args.seconds,
                                args.connections,
                                lua,
                            )
                            results.setdefault((backend.key, endpoint), Result()).samples.append(sample)
                            print(
                                f"round {round_no} {backend.key} {endpoint}: {sample.rps:.0f} req/s, "
                                f"{sample.cpu_us:.0f} µs CPU/req, {sample.connections} connections, "
                                f"{sample.errors} errors",
                                flush=True,
                            )
                    finally:
                        running.stop()
        finally:
            nginx.stop()
        text = report(results, args, time.monotonic() - started, backends)
        (args.out / "latest.md").write_text(text)
        (args.out / "latest.json").write_text(
            json.dumps(
                {f"{k[0]} {k[1]}": [s.__dict__ for s in v.samples] for k, v in results.items()}, indent=1
            )
        )
        chart(results, args.out / "latest.png", backends)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
