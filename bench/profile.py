"""``make profile``: where one worker's CPU per request goes, against Django's own cost.

One worker of this server (djpool, the server's defaults, access log on) on a
migrated demo database, wrk straight at its port (no nginx, so only the
worker's work is measured) on ``GET /api/notes/<id>``. Each round measures,
one after the other, so that a drifting machine hits both alike:

* the worker under load: CPU per request (user and system time from
  ``/proc/<pid>/task/*/stat``) of its IOLoop thread, which reads requests,
  builds environs, writes responses and the access log (and, in the default
  ``--django_mode=inline``, runs Django too), and of its other threads (with
  ``--django-mode=thread``, the Django thread: Django, djpool, the MySQL
  client), with their voluntary context switches per request;
* the in-process ceiling: the same Django application, loaded the way the
  worker loads it (``appserver.worker.load_application``: same settings, the
  connection held between requests) and called through the server's own
  ``call_application`` with the environ the server builds, in a loop in a
  child process: no HTTP, no second thread.

The report (``bench/results/profile.md``, raw rounds in ``profile.json``) gives
the medians and what the worker spends beyond the ceiling. ``--py-spy`` also
records a flame graph of the worker under the same load (``profile.svg``);
py-spy samples from outside the process, so read its proportions, not its
times. Nothing here checks a number against a target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import RESULTS, bench_database, parse_wrk, run_wrk, stat_seconds, wait_http  # noqa: E402
from tests.support import free_port  # noqa: E402

PYTHON = sys.executable


@dataclass
class ThreadTimes:
    """CPU seconds and voluntary context switches of one thread (or a sum of threads)."""

    user: float = 0.0
    system: float = 0.0
    switches: int = 0

    def minus(self, before: ThreadTimes) -> ThreadTimes:
        return ThreadTimes(
            self.user - before.user, self.system - before.system, self.switches - before.switches
        )


def thread_times(pid: int) -> tuple[ThreadTimes, ThreadTimes]:
    """(the main thread, all other threads) of process ``pid``, from /proc.

    The other threads are the Django thread (``--django_mode=thread``) and the
    stuck-request watcher, which wakes once a second and costs nothing
    measurable beside it.
    """
    main, others = ThreadTimes(), ThreadTimes()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            user, system = stat_seconds(task / "stat")
            status = (task / "status").read_text()
        except FileNotFoundError:
            continue  # the thread ended between listing and reading
        switches = int(status.split("voluntary_ctxt_switches:", 1)[1].split()[0])
        into = main if task.name == str(pid) else others
        into.user += user
        into.system += system
        into.switches += switches
    return main, others


@dataclass
class Round:
    """One round: the worker under load, then the in-process ceiling."""

    rps: float
    requests: int
    errors: int
    loop_user_us: float
    loop_system_us: float
    loop_switches: float
    django_user_us: float
    django_system_us: float
    django_switches: float
    inprocess_user_us: float
    inprocess_system_us: float
    inprocess_requests: int

    @property
    def loop_us(self) -> float:
        return self.loop_user_us + self.loop_system_us

    @property
    def django_us(self) -> float:
        return self.django_user_us + self.django_system_us

    @property
    def worker_us(self) -> float:
        return self.loop_us + self.django_us

    @property
    def inprocess_us(self) -> float:
        return self.inprocess_user_us + self.inprocess_system_us


def measure_worker(pid: int, url: str, seconds: float, connections: int) -> dict[str, float]:
    """Per-request CPU of the worker's threads over one wrk window."""
    run_wrk(url, 1.0, connections, None)  # warm-up
    loop0, django0 = thread_times(pid)
    output = run_wrk(url, seconds, connections, None)
    loop1, django1 = thread_times(pid)
    rps, _, _, errors, requests = parse_wrk(output)
    loop, django = loop1.minus(loop0), django1.minus(django0)
    per = 1e6 / max(requests, 1)
    return {
        "rps": rps,
        "requests": requests,
        "errors": errors,
        "loop_user_us": loop.user * per,
        "loop_system_us": loop.system * per,
        "loop_switches": loop.switches / max(requests, 1),
        "django_user_us": django.user * per,
        "django_system_us": django.system * per,
        "django_switches": django.switches / max(requests, 1),
    }


def measure_inprocess(env: dict[str, str], path: str, seconds: float) -> dict[str, float]:
    """Run this file's ``--in-process`` child for about ``seconds``; its per-request CPU."""
    out = subprocess.run(
        [PYTHON, __file__, "--in-process", path, "--seconds", str(seconds)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the in-process measurement failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def in_process(path: str, seconds: float) -> int:
    """The child: call the Django application in a loop; print per-request CPU as JSON."""
    from appserver.worker import load_application
    from appserver.wsgi import build_environ, call_application

    app = load_application(os.environ["DJANGO_SETTINGS_MODULE"])
    port = 8001
    headers = [("Host", f"127.0.0.1:{port}")]  # what wrk sends

    def batch(n: int) -> tuple[float, float]:
        environs = [
            build_environ("GET", path, "HTTP/1.1", headers, b"", "127.0.0.1", "http", port) for _ in range(n)
        ]
        before = os.times()
        for environ in environs:
            code = call_application(app, environ)[0]
            if code != 200:
                raise SystemExit(f"GET {path} answered {code} in-process")
        after = os.times()
        return after.user - before.user, after.system - before.system

    batch(200)  # warm-up: imports, caches, the connection
    user = system = 0.0
    requests = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        u, s = batch(200)
        user, system, requests = user + u, system + s, requests + 200
    per = 1e6 / requests
    print(
        json.dumps(
            {
                "inprocess_user_us": user * per,
                "inprocess_system_us": system * per,
                "inprocess_requests": requests,
            }
        )
    )
    return 0


def report(rounds: list[Round], args: argparse.Namespace, elapsed: float) -> str:
    def med(attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in rounds)

    worker, ceiling = med("worker_us"), med("inprocess_us")
    beyond = statistics.median(r.worker_us - r.inprocess_us for r in rounds)
    if args.django_mode == "inline":
        main_thread = "IOLoop thread (HTTP, environ, Django, djpool, MySQL client, responses, access log)"
        others = "other threads (the stuck-request watcher)"
        share = f"(the IOLoop thread: {med('loop_us') / ceiling:.2f} × the ceiling)"
    else:
        main_thread = "IOLoop thread (HTTP, environ, responses, access log, hand-off)"
        others = "Django thread (Django, djpool, MySQL client)"
        share = f"(the Django thread alone: {med('django_us') / ceiling:.2f} × the ceiling)"
    return "\n".join(
        [
            f"# Profile of one worker, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            f"wrk -c{args.connections} straight at one worker (no nginx, `--django_mode={args.django_mode}`) "
            "on GET /api/notes/<id>, "
            f"{len(rounds)} rounds × {args.seconds:g} s, each followed by Django called in-process "
            f"for as long; medians. Took {elapsed:.0f} s. Worker throughput {med('rps'):.0f} req/s.",
            "",
            "| where | CPU µs/request | user | system | voluntary switches/request |",
            "|---|---|---|---|---|",
            f"| {main_thread} | {med('loop_us'):.0f} | "
            f"{med('loop_user_us'):.0f} | {med('loop_system_us'):.0f} | {med('loop_switches'):.2f} |",
            f"| {others} | {med('django_us'):.0f} | "
            f"{med('django_user_us'):.0f} | {med('django_system_us'):.0f} | {med('django_switches'):.2f} |",
            f"| worker, all threads | {worker:.0f} | | | |",
            f"| Django in-process, no HTTP, one thread (the ceiling) | {ceiling:.0f} | "
            f"{med('inprocess_user_us'):.0f} | {med('inprocess_system_us'):.0f} | |",
            f"| beyond the ceiling (worker − in-process, per round) | {beyond:.0f} | | | |",
            "",
            f"Errors (non-2xx answers and socket errors): {sum(r.errors for r in rounds)}.",
            "",
            f"The worker spends {beyond / worker:.0%} of its CPU per request beyond Django's own cost "
            f"{share}.",
            "",
        ]
    )


def flame_graph(pid: int, url: str, seconds: float, connections: int, out: Path) -> str:
    """Record ``out`` with py-spy while wrk loads the worker; a line for the report."""
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(spy).exists():
        return "py-spy is not installed (make .venv/bin/.bench-installed): no flame graph.\n"
    load = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds + 3:g}s", url], stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(1)
        done = subprocess.run(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                f"{seconds:g}",
                "--rate",
                "200",
                "--threads",
                "--nonblocking",
                "--format",
                "flamegraph",
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
        )
    finally:
        load.wait()
    if done.returncode != 0:
        return f"py-spy failed ({done.returncode}): {done.stderr.strip()[-500:]}\n"
    return (
        f"Flame graph of the worker under the same load: [{out.name}]({out.name}) (py-spy, {seconds:g} s).\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--py-spy", action="store_true", help="also record a flame graph (profile.svg)")
    parser.add_argument(
        "--django-mode",
        choices=("inline", "thread"),
        default="inline",
        help="the worker's --django_mode (default inline, the server's default)",
    )
    parser.add_argument(
        "--database-url",
        help="use this MySQL server (a database is created and dropped there) instead of a throwaway MariaDB",
    )
    parser.add_argument("--in-process", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        return in_process(args.in_process, args.seconds)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    with bench_database(args.database_url) as (_, database_url, note_id):
        env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "conf.settings"}
        env.pop("DJANGO_DEBUG", None)
        port = free_port()
        path = f"/api/notes/{note_id}"
        url = f"http://127.0.0.1:{port}{path}"
        with tempfile.TemporaryFile() as log:
            worker = subprocess.Popen(
                [PYTHON, "server.py", f"--port={port}", f"--django_mode={args.django_mode}"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_http(url)
                rounds = []
                for round_no in range(1, args.rounds + 1):
                    sample = measure_worker(worker.pid, url, args.seconds, args.connections)
                    sample.update(measure_inprocess(env, path, args.seconds))
                    rounds.append(Round(**sample))  # type: ignore[arg-type]
                    r = rounds[-1]
                    print(
                        f"round {round_no}: {r.rps:.0f} req/s, {r.errors} errors; worker {r.worker_us:.0f} "
                        f"µs/req (IOLoop thread {r.loop_us:.0f}, other threads {r.django_us:.0f}); "
                        f"in-process {r.inprocess_us:.0f}",
                        flush=True,
                    )
                text = report(rounds, args, time.monotonic() - started)
                if args.py_spy:
                    text += "\n" + flame_graph(
                        worker.pid, url, args.seconds, args.connections, args.out / "profile.svg"
                    )
            except BaseException:
                log.seek(0)
                sys.stderr.write(
                    "the worker's log, last lines:\n" + log.read()[-3000:].decode(errors="replace")
                )
                raise
            finally:
                worker.terminate()
                worker.wait(30)
    (args.out / "profile.md").write_text(text)
    (args.out / "profile.json").write_text(json.dumps([asdict(r) for r in rounds], indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
