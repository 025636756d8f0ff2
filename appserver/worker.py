"""One worker process: one port, one IOLoop thread that runs Django too (or,
with ``--django_mode=thread``, a Django thread of its own).

Start-up: get the listening socket (inherited with ``--fd``, passed by systemd
socket activation, or bound on ``--port``: a taken port fails fast and
clearly), load Django where it runs, probe the databases, start serving, tell
the service manager ``READY=1``.

Shutdown on SIGTERM or SIGINT, or after ``--max_requests``: tell the manager
``STOPPING=1``, serve what waits in the accept queue and stop accepting, let
every request already read or queued finish (up to ``--graceful_timeout``;
responses meanwhile carry ``Connection: close``), close keep-alive
connections, hand back and close the database connections where Django runs,
exit 0. A second signal, or the graceful timeout, exits at once, logging the
unfinished requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback

from tornado.netutil import bind_sockets
from tornado.options import OptionParser

from . import systemd
from .config import SETTINGS
from .djangothread import DjangoRunner, DjangoThread, InlineDjango
from .endpoints import Health, MetricsEndpoint, check_databases
from .h1 import H1Server
from .http import Endpoint, Frontend, HTTPFront
from .metrics import Metrics
from .wsgi import WSGIApp

logger = logging.getLogger("appserver")

#: Exit code of a worker that gave up draining (graceful timeout or second signal).
EXIT_UNFINISHED = 3

#: Seconds a draining worker keeps idle keep-alive connections open once nothing is in
#: flight: a request may already be on its way on one of them (a proxy reuses its idle
#: upstream connections). It is answered, and its connection closed after the response.
KEEPALIVE_GRACE = 0.5


class StartupError(Exception):
    """The worker cannot start; the message says why and what to do."""


def load_application(settings_module: str) -> WSGIApp:
    """Runs on the Django thread: configure Django and build its WSGI handler."""
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    import django
    from django.core.servers.basehttp import get_internal_wsgi_application

    django.setup(set_prefix=False)
    try:
        from djpool.pool import hold_on_this_thread
    except ImportError:
        pass
    else:
        # This thread runs every request of the worker: pooled connections stay
        # with it between requests, cleaned and liveness-checked as ever (docs/djpool.md).
        hold_on_this_thread()
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
        self.stuck: str | None = None
        self.application: WSGIApp | None = None
        self.django: DjangoRunner = None  # type: ignore[assignment]  # set in serve()
        self.metrics = Metrics(self.port)
        self.endpoints: dict[str, Endpoint] = {"health": Health(self), "metrics": MetricsEndpoint(self)}
        self.max_requests = 0
        if options.max_requests:
            self.max_requests = options.max_requests + random.randint(0, options.max_requests_jitter)
        self._stop = asyncio.Event()
        self._watcher_stop = threading.Event()
        #: Set when the drain begins, so that the watcher thread starts timing it.
        self._watcher_wake = threading.Event()
        self._signals = 0
        #: monotonic() by which the drain must be over (set when it begins).
        self._drain_deadline = 0.0
        self._server: HTTPFront | H1Server | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in serve()
        self._stop_reason = ""

    # -- start-up ------------------------------------------------------------------

    def sockets(self) -> list[socket.socket]:
        """The listening sockets: inherited (--fd), socket-activated, or bound now."""
        if self.options.fd is not None:
            sock = socket.socket(fileno=self.options.fd)
            os.set_inheritable(sock.fileno(), False)
            sock.setblocking(False)
            self.port = sock.getsockname()[1]
            return [sock]
        activated = systemd.listen_sockets()
        if activated:
            self.port = activated[0].getsockname()[1]
            return activated
        try:
            return bind_sockets(self.port, self.options.address, backlog=1024)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {self.options.address}:{self.port}: {exc.strerror} "
                f"(is another worker already running on this port?)"
            ) from exc

    async def serve(self, sockets: list[socket.socket]) -> int:
        """Run until told to stop; return the process exit code."""
        loop = self._loop = asyncio.get_running_loop()
        self.django = InlineDjango(loop) if self.options.django_mode == "inline" else DjangoThread(loop)
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
        server: HTTPFront | H1Server
        if self.options.http == "tornado":
            server = HTTPFront(  # answers 431 for a head over --max_header_size; Tornado closes silently
                frontend,
                max_header_size=self.options.max_header_size,
                idle_connection_timeout=self.options.idle_connection_timeout,
                body_timeout=self.options.body_timeout,
                max_body_size=self.options.max_body_size,
            )
            server.add_sockets(sockets)
        else:
            server = H1Server(frontend, self.options)
            await server.listen(sockets)
        self._server = server
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._signal_arrived)
        loop.add_signal_handler(
            signal.SIGHUP,
            logger.info,
            "HUP ignored: a worker cannot reload in place; send HUP to the "
            "--ports launcher, or restart the worker (deploy rolling-restart)",
        )
        watchdogs = [self._watch_launcher()]
        interval = systemd.watchdog_interval()
        if interval:
            watchdogs.append(self._systemd_watchdog(interval))
        threading.Thread(target=self._watch, args=(interval,), name="watcher", daemon=True).start()
        tasks = [asyncio.ensure_future(w) for w in watchdogs]
        logger.info(
            "listening on http://%s:%d/ (pid %d, Django settings %s)",
            self.options.address,
            self.port,
            os.getpid(),
            self.options.settings,
        )
        systemd.notify(f"READY=1\nSTATUS=serving on port {self.port}\nMAINPID={os.getpid()}")
        await self._stop.wait()
        systemd.notify(f"STOPPING=1\nSTATUS=draining: {self._stop_reason}")
        code = await self._drain(server, frontend)
        self._watcher_stop.set()
        self._watcher_wake.set()
        for task in tasks:
            task.cancel()
        return code

    async def _probe_databases(self) -> None:
        try:
            result = await asyncio.wait_for(
                self.django.submit(check_databases, "startup check"), self.options.health_timeout * 5
            )
        except TimeoutError:
            logger.warning("database check at start-up timed out; serving anyway")
            return
        for alias, entry in result.items():
            if entry.get("ok"):
                extra = f", connection id {entry['connection_id']}" if "connection_id" in entry else ""
                logger.info("database %s: ok (%s%s)", alias, entry["vendor"], extra)
            elif "ImproperlyConfigured" in str(entry.get("error")):
                raise StartupError(f"database {alias} is misconfigured: {entry['error']}")
            else:
                logger.warning(
                    "database %s is not reachable: %s; serving anyway, /-/health answers 503",
                    alias,
                    entry.get("error"),
                )

    # -- running ---------------------------------------------------------------------

    def request_done(self, count: int) -> None:
        """Called after each Django request; starts the drain at --max_requests."""
        if self.max_requests and count >= self.max_requests and not self.draining:
            self.begin_drain(f"served {count} requests (--max_requests)")

    def _watch(self, watchdog_interval: float | None) -> None:
        """The watcher thread: stuck requests, and what a blocked loop cannot do.

        It logs the Django stack of a request running past --request_timeout
        (once per request). A thread of its own: under --django_mode=inline a
        long request holds the IOLoop, and this must still see it. There it also
        keeps the systemd watchdog fed while a request runs, as the free IOLoop
        does in thread mode (a slow request is reported as stuck, not killed),
        and ends a drain whose --graceful_timeout passes while the loop is still
        inside a request.
        """
        limit = self.options.request_timeout
        inline = self.django.inline
        feed = watchdog_interval if inline else None  # thread mode: the loop pings
        if not limit and not inline:
            return
        period = min(1.0, limit / 4 if limit else 1.0, feed or 1.0)
        reported_since: float | None = None
        while not self._watcher_stop.is_set():
            if not self.draining:
                if self._watcher_wake.wait(period):
                    continue  # the drain began: time it from now on
            else:
                left = self._drain_deadline - time.monotonic()
                self._watcher_stop.wait(min(period, left) if left > 0 else period)
            since = self.django.busy_since
            if inline and self.draining and since is not None and time.monotonic() >= self._drain_deadline:
                # The loop is still inside a request and cannot end the drain itself.
                self._exit_now(f"graceful timeout ({self.options.graceful_timeout:g} s)")
            if since is not None and feed:
                systemd.notify("WATCHDOG=1")
            if not limit:
                continue
            if since is None or time.monotonic() - since < limit:
                self.stuck = None
                continue
            if reported_since == since:
                continue
            reported_since = since
            self.stuck = f"{self.django.current} running for more than {limit:g} s"
            self.metrics.stuck.inc()
            frame = sys._current_frames().get(self.django.ident or -1)
            stack = "".join(traceback.format_stack(frame)) if frame else "(stack not available)\n"
            logger.error(
                "stuck request: %s; Django thread stack (most recent call last):\n%s"
                "The request keeps running; /-/health reports this worker as stuck until it ends.",
                self.stuck,
                stack,
            )

    async def _watch_launcher(self) -> None:
        """Under --ports: drain and exit if the launcher dies (we would be orphaned)."""
        launcher = os.environ.get("APPSERVER_LAUNCHER_PID")
        if not launcher or self.options.fd is None:
            return
        while os.getppid() == int(launcher):
            await asyncio.sleep(1.0)
        self.begin_drain("the launcher is gone")

    async def _systemd_watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the IOLoop: a blocked loop stops the pings and systemd restarts us
        (under --django_mode=inline, a running request is not a blocked loop: see above)."""
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- stopping --------------------------------------------------------------------

    def begin_drain(self, reason: str) -> None:
        """Stop accepting and finish what was accepted (see the module doc)."""
        if self.draining:
            return
        logger.info("draining: %s (graceful timeout %gs)", reason, self.options.graceful_timeout)
        self.draining = True
        self._stop_reason = reason
        self._drain_deadline = time.monotonic() + self.options.graceful_timeout
        if self._server is not None:
            # Every response from now on says Connection: close and its connection
            # closes after it (the one running now included).
            self._server.no_keep_alive = True
        self._stop.set()
        # Under --django_mode=inline the loop may be inside a request and enforce
        # nothing until it returns: the watcher thread times the drain too.
        self._watcher_wake.set()

    def _signal_arrived(self, signum: int, frame: object) -> None:
        """SIGTERM / SIGINT, on the main thread between two bytecodes.

        That is in the loop's own code when it waits, or, under
        --django_mode=inline, in the middle of a request's Django code: then the
        loop would see the signal only after the request, so it is acted on here
        (the drain begins, a second signal exits at once).
        """
        if self.django.inline and self.django.busy_since is not None:
            self._on_signal(signum)
        else:
            self._loop.call_soon_threadsafe(self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            self.begin_drain(name)
        else:
            self._exit_now(f"second signal ({name})")

    def _exit_now(self, why: str) -> None:
        unfinished = sorted(str(r) for r in self.frontend.in_flight)
        logger.warning(
            "%s: exiting with %d unfinished request(s)%s",
            why,
            len(unfinished),
            (": " + ", ".join(unfinished)) if unfinished else "",
        )
        logging.shutdown()
        os._exit(EXIT_UNFINISHED if unfinished else 0)

    async def _drain(self, server: HTTPFront | H1Server, frontend: Frontend) -> int:
        server.stop()  # no new connections; our copy of the listening socket closes
        deadline = self._drain_deadline
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if frontend.in_flight:
                quiet_since = None
            elif not server.connection_count:
                break
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE_GRACE:
                break  # only idle keep-alive connections are left
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


def configure_logging(options: OptionParser, port: int | str) -> None:
    """Put the port in every log line; with --log_format=json, make every line JSON."""
    from tornado.log import LogFormatter

    from .accesslog import JSONFormatter, PortFormatter

    for handler in logging.getLogger().handlers:
        if options.log_format == "json":
            handler.setFormatter(JSONFormatter(port))
        elif isinstance(handler.formatter, LogFormatter):
            fmt = f"%(color)s[%(levelname)1.1s %(asctime)s :{port} %(name)s]%(end_color)s %(message)s"
            color = bool(getattr(handler.formatter, "_colors", None))
            handler.setFormatter(PortFormatter(fmt=fmt, color=color))


def run_worker(options: OptionParser) -> int:
    """Get the socket, serve, and return the exit code of one worker process."""
    worker = Worker(options)
    try:
        sockets = worker.sockets()
    except StartupError as exc:
        configure_logging(options, options.port)
        logger.error("%s", exc)
        return 1
    configure_logging(options, worker.port)
    if options.django_mode == "inline":
        defaults = {s.name: s.default for s in SETTINGS}
        for name in ("max_queue", "health_timeout"):
            if getattr(options, name) != defaults[name]:
                logger.warning(
                    "--%s=%s has no effect with Django on the IOLoop thread (--django_mode=inline); "
                    "it applies to --django_mode=thread",
                    name,
                    getattr(options, name),
                )
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
