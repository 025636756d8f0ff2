"""The benchmark's measuring pieces, on a real server and a real wrk run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.profile import measure_inprocess
from bench.run import ROOT, children_of, cpu_seconds, parse_wrk, run_wrk
from tests.support import MySQLServer, ServerProcess

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk not installed (scripts/sysdeps.sh test)"
)


def test_a_short_wrk_run_is_parsed_into_rate_latency_and_errors(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(None, "--log_format=off")
    pids = children_of(server.proc.pid)  # type: ignore[union-attr]
    cpu_before = cpu_seconds(pids)
    output = run_wrk(server.url("/api/notes/999999"), 1.0, 2, None)  # 404s count as errors
    rps, p50, p99, errors, requests = parse_wrk(output)
    assert requests > 0
    assert rps > 0
    assert 0 < p50 <= p99
    assert errors == requests  # every answer was a 404: wrk's "Non-2xx or 3xx responses"
    assert cpu_seconds(pids) > cpu_before  # the server's CPU time, read from /proc, moved


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_make_profile_splits_a_worker_s_cpu_by_thread_against_django_in_process(
    mysql: MySQLServer, tmp_path: Path, mode: str
) -> None:
    quick = ["--rounds", "1", "--seconds", "1", "--connections", "2", "--out", str(tmp_path)]
    done = subprocess.run(
        [
            sys.executable,
            "bench/profile.py",
            *quick,
            f"--django-mode={mode}",
            "--database-url",
            mysql.url("test"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (measured,) = json.loads((tmp_path / "profile.json").read_text())
    assert measured["requests"] > 0
    assert measured["errors"] == 0
    # Read per thread from /proc/<pid>/task: in thread mode both threads did work;
    # inline, the IOLoop thread did nearly all of it (the rest is the watcher thread).
    loop = measured["loop_user_us"] + measured["loop_system_us"]
    others = measured["django_user_us"] + measured["django_system_us"]
    assert loop > 0
    assert measured["loop_switches"] > 0
    if mode == "thread":
        assert others > 0
    else:
        assert others < loop / 10, (loop, others)
    # The in-process child really called Django (batches of 200 after a warm-up).
    assert measured["inprocess_requests"] >= 200
    assert measured["inprocess_user_us"] > 0
    report = (tmp_path / "profile.md").read_text()
    assert f"`--django_mode={mode}`" in report
    assert "| IOLoop thread" in report
    assert "| Django in-process" in report
    assert "beyond the ceiling" in report


def test_the_in_process_ceiling_refuses_to_time_a_request_that_fails(app_db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": app_db_url, "DJANGO_SETTINGS_MODULE": "conf.settings"}
    env.pop("DJANGO_DEBUG", None)
    # A path the demo does not have: timing 404 pages would report a ceiling of nothing.
    with pytest.raises(RuntimeError, match="GET /no-such-page answered 404 in-process"):
        measure_inprocess(env, "/no-such-page", 0.2)
