"""Endpoints the server answers itself, under ``--internal_prefix`` (default ``/-/``).

They run on the IOLoop thread, ahead of Django, so ``/-/health`` answers even
while the Django thread is busy with a slow request: then it reports the last
database check instead of queueing behind the slow request.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from .http import Exchange, json_response
from .wsgi import Response

if TYPE_CHECKING:
    from .worker import Worker


def check_databases() -> dict[str, Any]:
    """Runs on the Django thread: one round trip per database, then hand connections back."""
    from django.db import close_old_connections, connections

    result: dict[str, Any] = {}
    for alias in connections:
        conn = connections[alias]
        entry: dict[str, Any] = {"vendor": conn.vendor}
        try:
            with conn.cursor() as cursor:
                if conn.vendor == "mysql":
                    cursor.execute("SELECT CONNECTION_ID()")
                    entry["connection_id"] = cursor.fetchone()[0]
                else:
                    cursor.execute("SELECT 1")
                    cursor.fetchone()
            entry["ok"] = True
        except Exception as exc:
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"
        result[alias] = entry
    close_old_connections()  # what request_finished does: pooled connections go back
    return result


def _pool_stats() -> dict[str, Any]:
    try:
        import djpool
    except ImportError:
        return {}
    return djpool.stats()


class Health:
    """``GET /-/health``: 200 when this worker and its databases work, else 503."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.last: dict[str, Any] | None = None
        self.last_at = 0.0

    async def __call__(self, request: Exchange) -> Response:
        worker = self.worker
        django = worker.django
        body: dict[str, Any] = {
            "status": "ok",
            "pid": os.getpid(),
            "port": worker.port,
            "draining": worker.draining,
            "django_thread": {"busy": django.busy_since is not None, "queued": django.pending},
        }
        if django.pending == 0:
            try:
                db = await asyncio.wait_for(
                    django.submit(check_databases, "health check"), worker.options.health_timeout
                )
            except TimeoutError:
                error = f"database check did not finish within {worker.options.health_timeout:g} s"
                db = {alias: {"ok": False, "error": error} for alias in (self.last or {"default": None})}
            self.last, self.last_at = db, time.monotonic()
            fresh = True
        else:
            db = self.last or {}
            fresh = False
        body["db"] = {alias: dict(entry) for alias, entry in db.items()}
        for alias, stats in _pool_stats().items():
            body["db"].setdefault(alias, {})["pool"] = stats
        body["db_checked"] = (
            "now"
            if fresh
            else (
                f"{time.monotonic() - self.last_at:.1f}s ago (Django thread busy)" if self.last else "never"
            )
        )
        failed = {a: e.get("error") for a, e in body["db"].items() if e.get("ok") is False}
        if failed:
            body["status"] = "unavailable"
            body["reason"] = "; ".join(f"{a}: {e}" for a, e in failed.items())
            return json_response(503, body)
        if worker.stuck:
            body["status"] = "stuck"
            body["reason"] = worker.stuck
            return json_response(503, body)
        if worker.draining:
            body["status"] = "draining"
            return json_response(503, body)
        return json_response(200, body)


class MetricsEndpoint:
    """``GET /-/metrics``: this worker's Prometheus metrics."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def __call__(self, request: Exchange) -> Response:
        from .metrics import CONTENT_TYPE

        metrics = self.worker.metrics
        metrics.in_flight.set(len(self.worker.frontend.in_flight) - 1)  # not counting this scrape
        metrics.queue.set(self.worker.django.pending)
        return 200, "OK", [("Content-Type", CONTENT_TYPE), ("Cache-Control", "no-store")], metrics.render()
