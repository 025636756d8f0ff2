"""``python server.py --ports=8001-8004``: one worker per port, supervised.

The launcher binds every port itself (so a taken port fails before any worker
starts) and starts each worker as a fresh ``server.py --port=N --fd=FD``
process that inherits only its listening socket: no database connection,
thread or event loop crosses from the launcher into a worker. Workers report
``READY=1`` / ``STOPPING=1`` over a notify socket of their own, the protocol
systemd uses, so the launcher knows when a worker serves without polling.

Signals:

* TERM / INT: forwarded to every worker, which drains; the launcher exits
  when they have (0 if all exited cleanly). A second signal is forwarded too,
  and workers then exit at once.
* HUP: rolling restart, one port at a time: start the new worker on the same
  socket, wait until it is ready and answers ``/-/health``, then drain the old
  one. Because both share the listening socket, the port never stops
  accepting. If a new worker fails, the roll stops and the old workers keep
  serving.

A worker that dies is restarted (at once the first time, then with growing
back-off); one that dies ``MAX_FAILURES`` times in a row without staying up
``STABLE_AFTER`` seconds makes the launcher give up loudly and exit 1. A worker
that drains on its own (``--max_requests``) gets its replacement started as
soon as it announces ``STOPPING=1``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.netutil import bind_sockets
from tornado.options import OptionParser

from . import systemd
from .config import parse_ports

logger = logging.getLogger("appserver.launcher")

STARTUP_TIMEOUT = 60.0
STABLE_AFTER = 10.0
MAX_FAILURES = 5
BACKOFF = (0.0, 0.5, 1.0, 2.0, 4.0)


@dataclass
class Child:
    """One worker process and what the launcher knows about it."""

    port: int
    proc: asyncio.subprocess.Process
    notify: socket.socket
    notify_path: Path
    started: float = field(default_factory=time.monotonic)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    retired: bool = False  # replaced on purpose: its exit is expected
    #: Start-up or a rolling restart waits for its READY and handles its failure itself.
    awaited: bool = False


class Launcher:
    """Supervises one worker per port (see the module doc)."""

    def __init__(self, options: OptionParser, argv: list[str]) -> None:
        self.options = options
        self.ports = parse_ports(options.ports)
        self.worker_args = [
            a for a in argv[1:] if not a.startswith(("--ports=", "--port=", "--fd=")) and a != "--help"
        ]
        self.script = os.path.abspath(argv[0])
        self.sockets: dict[int, socket.socket] = {}
        self.children: dict[int, Child] = {}
        self.failures: dict[int, int] = dict.fromkeys(self.ports, 0)
        self.restarts: dict[int, int] = dict.fromkeys(self.ports, 0)
        self.stopping = False
        self.exit_code = 0
        self.rolling: asyncio.Task[None] | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="appserver-launcher-"))
        self.spawned = 0
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- start-up ------------------------------------------------------------------

    def bind(self) -> None:
        """Bind every port now; a taken port is an error naming it."""
        for port in self.ports:
            try:
                [sock] = bind_sockets(port, self.options.address, family=socket.AF_INET, backlog=1024)
            except OSError as exc:
                for s in self.sockets.values():
                    s.close()
                raise SystemExit(
                    f"server.py: error: cannot listen on {self.options.address}:{port}: {exc.strerror} "
                    f"(is something else using it?)"
                ) from exc
            os.set_inheritable(sock.fileno(), True)
            self.sockets[port] = sock

    async def run(self) -> int:
        """Start all workers, supervise them until told to stop; return the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        started = [await self.spawn(port, awaited=True) for port in self.ports]
        failed = await self._wait_ready(started)
        if failed:
            logger.error("worker(s) on port(s) %s failed to start; stopping", ", ".join(map(str, failed)))
            self.exit_code = 1
            await self.stop_all(signal.SIGTERM)
            return 1
        logger.info(
            "all %d workers ready on ports %s (pid %d)", len(self.ports), self.options.ports, os.getpid()
        )
        systemd.notify(f"READY=1\nSTATUS={len(self.ports)} workers serving")
        await self._done.wait()
        return self.exit_code

    async def spawn(self, port: int, awaited: bool = False) -> Child:
        """Start a worker for ``port`` on the shared listening socket."""
        sock = self.sockets[port]
        # Short: a unix socket path has at most 107 bytes, and $TMPDIR may be long.
        self.spawned += 1
        notify_path = self.tmp / f"{port}.{self.spawned}"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        notify.bind(str(notify_path))
        notify.setblocking(False)
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "APPSERVER_RESTARTS": str(self.restarts[port]),
            "APPSERVER_LAUNCHER_PID": str(os.getpid()),
        }
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(name, None)  # the manager's, not the worker's
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            self.script,
            *self.worker_args,
            f"--port={port}",
            f"--fd={sock.fileno()}",
            env=env,
            pass_fds=(sock.fileno(),),
            # Own session: a Ctrl-C or a signal to the launcher's process group
            # reaches workers only through the launcher, exactly once.
            start_new_session=True,
        )
        child = Child(port, proc, notify, notify_path, awaited=awaited)
        asyncio.get_running_loop().add_reader(notify.fileno(), self._on_notify, child)
        self._background(self._watch(child))
        logger.info("port %d: started worker pid %d", port, proc.pid)
        self.children[port] = child
        return child

    async def _wait_ready(self, children: list[Child], timeout: float = STARTUP_TIMEOUT) -> list[int]:
        """Wait until each child is ready or gone; return the ports that failed."""

        async def ready_or_dead(child: Child) -> bool:
            waiters = [asyncio.ensure_future(child.ready.wait()), asyncio.ensure_future(child.proc.wait())]
            _, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()
            return child.ready.is_set()

        results = await asyncio.gather(*(ready_or_dead(c) for c in children))
        return [c.port for c, ok in zip(children, results, strict=True) if not ok]

    # -- events --------------------------------------------------------------------

    def _on_notify(self, child: Child) -> None:
        try:
            data = child.notify.recv(4096).decode(errors="replace")
        except OSError:
            return
        fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        if fields.get("READY") == "1":
            child.ready.set()
        if fields.get("STOPPING") == "1" and not child.stopping:
            child.stopping = True
            if not self.stopping and not child.retired and self.children.get(child.port) is child:
                # Draining on its own (--max_requests): start the replacement now.
                child.retired = True
                logger.info(
                    "port %d: worker pid %d is recycling; starting its replacement",
                    child.port,
                    child.proc.pid,
                )
                self.restarts[child.port] += 1
                self._background(self.spawn(child.port))

    def _background(self, coro: Any) -> None:
        """Run ``coro`` as a task the launcher keeps a reference to until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, child: Child) -> None:
        code = await child.proc.wait()
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.notify.fileno())
        child.notify.close()
        child.notify_path.unlink(missing_ok=True)
        port = child.port
        if self.stopping or child.retired:
            logger.info("port %d: worker pid %d exited (%s)", port, child.proc.pid, describe_exit(code))
            if code not in (0, None) and self.stopping:
                self.exit_code = self.exit_code or 1
            self._check_all_gone()
            return
        if child.awaited and not child.ready.is_set():
            return  # never ready: start-up or the rolling restart waiting for it gives up instead
        if self.children.get(port) is not child:
            return
        lived = time.monotonic() - child.started
        if lived >= STABLE_AFTER:
            self.failures[port] = 0
        self.failures[port] += 1
        failures = self.failures[port]
        if failures >= MAX_FAILURES:
            logger.critical(
                "port %d: worker died %d times in a row (last: %s); giving up and stopping all workers",
                port,
                failures,
                describe_exit(code),
            )
            self.exit_code = 1
            await self.stop_all(signal.SIGTERM)
            return
        delay = BACKOFF[min(failures - 1, len(BACKOFF) - 1)]
        logger.error(
            "port %d: worker pid %d died (%s) after %.1f s; restarting in %g s",
            port,
            child.proc.pid,
            describe_exit(code),
            lived,
            delay,
        )
        await asyncio.sleep(delay)
        if not self.stopping:
            self.restarts[port] += 1
            await self.spawn(port)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            if self.stopping:
                return
            if self.rolling and not self.rolling.done():
                logger.warning("HUP ignored: a rolling restart is already running")
                return
            self.rolling = asyncio.ensure_future(self.rolling_restart())
            return
        name = signal.Signals(signum).name
        if not self.stopping:
            logger.info("%s: stopping all workers", name)
            self._background(self.stop_all(signum))
        else:
            logger.info("%s again: workers exit now", name)
            for child in self.children.values():
                if child.proc.returncode is None:
                    child.proc.send_signal(signum)

    # -- stopping and rolling ---------------------------------------------------------

    async def stop_all(self, signum: int) -> None:
        """Drain every worker; the launcher exits once all are gone."""
        self.stopping = True
        if self.rolling:
            self.rolling.cancel()
        systemd.notify("STOPPING=1")
        for child in list(self.children.values()):
            if child.proc.returncode is None:
                child.proc.send_signal(signum)
        deadline = self.options.graceful_timeout + 10
        waits = [c.proc.wait() for c in self.children.values() if c.proc.returncode is None]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), deadline)
            except TimeoutError:
                for child in self.children.values():
                    if child.proc.returncode is None:
                        logger.error(
                            "port %d: worker pid %d did not exit; killing it", child.port, child.proc.pid
                        )
                        child.proc.kill()
                self.exit_code = self.exit_code or 1
        self._check_all_gone()

    def _check_all_gone(self) -> None:
        if self.stopping and all(c.proc.returncode is not None for c in self.children.values()):
            for sock in self.sockets.values():
                sock.close()
            self._done.set()

    async def rolling_restart(self) -> None:
        """Replace the workers one port at a time (see the module doc)."""
        logger.info("HUP: rolling restart of %d workers", len(self.ports))
        for index, port in enumerate(self.ports, 1):
            old = self.children[port]
            old.retired = True
            self.restarts[port] += 1
            new = await self.spawn(port, awaited=True)
            failed = await self._wait_ready([new])
            if not failed and not await self._answers_health(port, new.proc.pid):
                failed = [port]
            if failed:
                logger.error(
                    "rolling restart stopped at port %d: the new worker did not become healthy; "
                    "the old workers keep serving",
                    port,
                )
                new.retired = True
                if new.proc.returncode is None:
                    new.proc.kill()
                self.children[port] = old
                old.retired = False
                return
            logger.info(
                "[%d/%d] port %d: new worker pid %d healthy; draining old pid %d",
                index,
                len(self.ports),
                port,
                new.proc.pid,
                old.proc.pid,
            )
            if old.proc.returncode is None:
                old.proc.send_signal(signal.SIGTERM)
                await old.proc.wait()
        logger.info("rolling restart done")

    async def _answers_health(self, port: int, pid: int, attempts: int = 40) -> bool:
        """Ask /-/health until the new ``pid`` answers 200 (both workers share the port)."""
        loop = asyncio.get_running_loop()
        host = "127.0.0.1" if self.options.address in ("", "0.0.0.0", "::") else self.options.address
        url = f"http://{host}:{port}{self.options.internal_prefix}health"
        for _ in range(attempts):
            body = await loop.run_in_executor(None, _get_json, url)
            if body and body.get("pid") == pid and body.get("status") == "ok":
                return True
            await asyncio.sleep(0.05)
        return False


def _get_json(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except Exception:
        return None


def describe_exit(code: int | None) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def run_launcher(options: OptionParser, argv: list[str]) -> int:
    """Entry point for ``--ports``."""
    launcher = Launcher(options, argv)
    try:
        launcher.bind()
        return asyncio.run(launcher.run())
    finally:
        for path in launcher.tmp.glob("*"):
            path.unlink(missing_ok=True)
        launcher.tmp.rmdir()
