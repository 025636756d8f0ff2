"""``GET /-/metrics``: Prometheus text format, one scrape target per worker port.

Each worker has its own registry (never the global default one, so nothing
leaks between processes or tests): request counters by method and status
class, a latency histogram, in-flight and queue gauges, restarts, and the
djpool counters read at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Latency buckets (seconds) for a database-backed Django view behind nginx.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class PoolCollector(Collector):
    """djpool's counters and gauges, read when Prometheus scrapes."""

    def collect(self) -> Iterator[Any]:
        try:
            import djpool
            from djpool.pool import COUNTERS  # the list Pool.stats() reports
        except ImportError:
            return
        stats = djpool.stats()
        for name in COUNTERS:
            family = CounterMetricFamily(
                f"djpool_{name}", f"djpool: {name.replace('_', ' ')}", labels=["alias"]
            )
            for alias, s in stats.items():
                family.add_metric([alias], s.get(name, 0))
            yield family
        discards = CounterMetricFamily(
            "djpool_discards", "djpool: connections discarded, by reason", labels=["alias", "reason"]
        )
        for alias, s in stats.items():
            for reason, count in s.get("discards", {}).items():
                discards.add_metric([alias, reason], count)
        yield discards
        for gauge in ("idle", "in_use", "held"):
            family_g = GaugeMetricFamily(f"djpool_{gauge}", f"djpool: connections {gauge}", labels=["alias"])
            for alias, s in stats.items():
                family_g.add_metric([alias], s.get(gauge, 0))
            yield family_g


class Metrics:
    """The metrics of one worker."""

    def __init__(self, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("appserver_requests", "Requests answered", ["method", "status"], registry=r)
        self.latency = Histogram(
            "appserver_request_duration_seconds",
            "Time from the request's headers to its response",
            buckets=BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "appserver_requests_in_flight", "Requests read and not yet answered", registry=r
        )
        self.queue = Gauge(
            "appserver_django_queue_depth", "Jobs waiting for or running on the Django thread", registry=r
        )
        self.rejected = Counter(
            "appserver_rejected", "Requests refused with 503 because the queue was full", registry=r
        )
        self.stuck = Counter(
            "appserver_stuck_requests", "Requests that ran past --request_timeout", registry=r
        )
        restarts = Gauge(
            "appserver_worker_restarts",
            "Times the launcher restarted the worker on this port (0 outside --ports)",
            registry=r,
        )
        restarts.set(int(os.environ.get("APPSERVER_RESTARTS", "0") or 0))
        info = Gauge("appserver_worker_info", "This worker's port and pid", ["port", "pid"], registry=r)
        info.labels(str(port), str(os.getpid())).set(1)
        r.register(PoolCollector())
        self._children: dict[tuple[str, int], Any] = {}

    def observe(self, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (method, status // 100)
        child = self._children.get(key)
        if child is None:
            label = method if method in _METHODS else "other"
            child = self._children[key] = self.requests.labels(label, f"{status // 100}xx")
        child.inc()
        self.latency.observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
