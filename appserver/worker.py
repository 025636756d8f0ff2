"""One worker process: one port, one IOLoop thread, one Django thread.

Start-up: bind the port (fail fast and clearly if it is taken), load Django on
the Django thread, probe the databases, start serving. Shutdown on SIGTERM or
SIGINT: stop accepting, let every request already read or queued finish
(up to ``--graceful_timeout``), close keep-alive connections, hand back and
close the database connections on the Django thread, exit 0. A second signal
exits at once, naming the unfinished requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.options import OptionParser

from .djangothread import DjangoThread
from .endpoints import Health, check_databases
from .http import Endpoint, Frontend
from .wsgi import WSGIApp

logger = logging.getLogger("appserver")


class StartupError(Exception):
    """The worker cannot start; the message says why and what to do."""


def load_application(settings_module: str) -> WSGIApp:
    """Runs on the Django thread: configure Django and build its WSGI handler."""
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    import django
    from django.core.servers.basehttp import get_internal_wsgi_application

    django.setup(set_prefix=False)
    return get_internal_wsgi_application()  # type: ignore[no-any-return]


def close_databases() -> None:
    """Runs on the Django thread: hand back and close every database connection."""
    from django.db import connections

    connections.close_all()
    try:
        from djpool.pool import all_pools, close_pool
    except ImportError:
        return
    for name in list(all_pools()):
        close_pool(name)


class Worker:
    """Serves one port until told to stop."""

    def __init__(self, options: OptionParser) -> None:
        self.options = options
        self.port: int = options.port
        self.draining = False
        self.application: WSGIApp | None = None
        self.django: DjangoThread = None  # type: ignore[assignment]  # set in serve()
        self.endpoints: dict[str, Endpoint] = {"health": Health(self)}
        self._stop = asyncio.Event()
        self._signals = 0

    def bind(self) -> list[Any]:
        """Bind the listening socket now, so a taken port fails before anything else."""
        try:
            return bind_sockets(self.port, self.options.address, backlog=1024)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {self.options.address}:{self.port}: {exc.strerror} "
                f"(is another worker already running on this port?)"
            ) from exc

    async def serve(self, sockets: list[Any]) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        loop = asyncio.get_running_loop()
        self.django = DjangoThread(loop)
        try:
            self.application = await self.django.submit(
                lambda: load_application(self.options.settings), "django.setup"
            )
        except Exception as exc:
            logger.exception("could not load Django settings %r", self.options.settings)
            raise StartupError(f"could not load Django ({self.options.settings}): {exc}") from exc
        await self._probe_databases()

        frontend = Frontend(self)
        self.frontend = frontend
        server = HTTPServer(
            frontend,
            xheaders=self.options.xheaders,
            max_header_size=self.options.max_header_size,
            idle_connection_timeout=self.options.idle_connection_timeout,
            body_timeout=self.options.body_timeout,
            max_body_size=self.options.max_body_size,
        )
        server.add_sockets(sockets)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        logger.info(
            "listening on http://%s:%d/ (pid %d, Django settings %s)",
            self.options.address, self.port, os.getpid(), self.options.settings,
        )
        await self._stop.wait()
        return await self._drain(server, frontend)

    async def _probe_databases(self) -> None:
        try:
            result = await asyncio.wait_for(
                self.django.submit(check_databases, "startup check"), self.options.health_timeout * 5
            )
        except asyncio.TimeoutError:
            logger.warning("database check at start-up timed out; serving anyway")
            return
        for alias, entry in result.items():
            if entry.get("ok"):
                extra = f", connection id {entry['connection_id']}" if "connection_id" in entry else ""
                logger.info("database %s: ok (%s%s)", alias, entry["vendor"], extra)
            else:
                logger.warning(
                    "database %s is not reachable: %s; serving anyway, /-/health answers 503",
                    alias, entry.get("error"),
                )

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            logger.info("%s: draining (graceful timeout %gs)", name, self.options.graceful_timeout)
            self.draining = True
            self._stop.set()
        else:
            self._exit_now(f"second signal ({name})")

    def _exit_now(self, why: str) -> None:
        unfinished = sorted(
            f"{r.start_line.method} {r.start_line.path}" for r in self.frontend.in_flight if r.start_line
        )
        logger.warning(
            "%s: exiting with %d unfinished request(s)%s",
            why, len(unfinished), (": " + ", ".join(unfinished)) if unfinished else "",
        )
        logging.shutdown()
        os._exit(1 if unfinished else 0)

    async def _drain(self, server: HTTPServer, frontend: Frontend) -> int:
        server.stop()  # no new connections; the listening socket closes
        deadline = time.monotonic() + self.options.graceful_timeout
        while frontend.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if frontend.in_flight:
            self._exit_now(f"graceful timeout ({self.options.graceful_timeout:g} s)")
        await server.close_all_connections()  # idle keep-alive connections
        try:
            await asyncio.wait_for(self.django.submit(close_databases, "shutdown"), 10)
        except Exception:
            logger.exception("closing the database connections failed")
        self.django.stop()
        logger.info("stopped cleanly")
        return 0


def configure_logging_prefix(port: int) -> None:
    """Put the port in every log line, so interleaved worker logs stay readable."""
    from tornado.log import LogFormatter

    fmt = f"%(color)s[%(levelname)1.1s %(asctime)s :{port} %(name)s]%(end_color)s %(message)s"
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, LogFormatter):
            color = getattr(handler.formatter, "_colors", None)
            handler.setFormatter(LogFormatter(fmt=fmt, color=bool(color)))


def run_worker(options: OptionParser) -> int:
    """Bind, serve, and return the exit code of one worker process."""
    configure_logging_prefix(options.port)
    worker = Worker(options)
    try:
        sockets = worker.bind()
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    loop_factory = None
    if options.event_loop == "uvloop":
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            logger.warning("uvloop is not installed; using the asyncio event loop")
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(worker.serve(sockets))
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    finally:
        sys.stdout.flush()
