"""The benchmark's measuring pieces, on a real server and a real wrk run."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from bench.run import children_of, cpu_seconds, parse_wrk, run_wrk
from tests.support import ServerProcess

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
