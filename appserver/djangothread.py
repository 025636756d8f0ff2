"""The one thread of a worker process that runs Django.

Django refuses database calls on a thread with a running event loop, and keeps
its connections per thread. So every piece of Django code of a worker, from
``django.setup()`` to the last ``close()``, runs here, one job at a time,
while the IOLoop thread keeps reading requests, answering ``/-/health`` and
writing responses.

The hand-off is a plain queue one way and ``call_soon_threadsafe`` the other:
one thread switch per request, no executor futures. Results finished while
the loop has not yet picked up the previous ones ride along with them: one
wake-up of the loop delivers all of them, in order.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_STOP = object()


class DjangoThread:
    """A single worker thread fed from the event loop; results come back as futures."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "django") -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Finished jobs not yet delivered on the loop, and whether a delivery is scheduled.
        self._results: collections.deque[tuple[Any, Any, BaseException | None]] = collections.deque()
        self._wake_scheduled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        #: Jobs submitted and not yet finished (running one included). Loop thread only.
        self.pending = 0
        #: Of those, the server's own jobs (health checks, start-up, shutdown): submit().
        self.internal = 0
        #: monotonic() when the running job started, None when idle.
        self.busy_since: float | None = None
        #: The running job's label (e.g. the request), None when idle.
        self.current: object | None = None
        self._thread.start()

    @property
    def ident(self) -> int | None:
        """The thread id, to find its stack in ``sys._current_frames()``."""
        return self._thread.ident

    def submit(self, fn: Callable[[], Any], label: object = "") -> asyncio.Future[Any]:
        """Run one of the server's own jobs on the Django thread; call from the loop thread.

        Counted in :attr:`internal` as well, so that a health check never takes a
        request's place in the ``--max_queue`` budget.
        """
        future = self._loop.create_future()
        self.internal += 1

        def settle(result: Any, error: BaseException | None) -> None:
            self.internal -= 1
            if future.cancelled():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.call(fn, settle, label)
        return future

    def call(
        self, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None], label: object = ""
    ) -> None:
        """Run ``fn()`` on the Django thread, then ``done(result, error)`` on the loop thread.

        The fast path for requests: no future, no task, one wake-up each way.
        ``label`` (anything with a ``str()``) names the job in stuck-request reports.
        """
        self.pending += 1
        self._jobs.put((fn, done, label))

    def stop(self) -> None:
        """Let queued jobs finish, then end the thread."""
        self._jobs.put(_STOP)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        call_soon = self._loop.call_soon_threadsafe
        results = self._results
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, done, label = job
            self.busy_since = time.monotonic()
            self.current = label
            try:
                result, error = fn(), None
            except BaseException as exc:  # delivered to the awaiting coroutine
                result, error = None, exc
            self.busy_since = None
            self.current = None
            results.append((done, result, error))
            # _deliver clears the flag only once it found nothing left after it:
            # a result appended before that is taken by it, one after gets a wake-up.
            if not self._wake_scheduled:
                self._wake_scheduled = True
                try:
                    call_soon(self._deliver)
                except RuntimeError:
                    return  # the loop is closed: the process is going away

    def _deliver(self) -> None:
        results = self._results
        try:
            while True:
                while results:
                    done, result, error = results.popleft()
                    self.pending -= 1
                    done(result, error)
                self._wake_scheduled = False
                if not results:
                    return
                self._wake_scheduled = True  # one arrived just now: take it too
        except BaseException:
            # A callback raised: deliver the rest on the next loop iteration.
            self._wake_scheduled = True
            self._loop.call_soon(self._deliver)
            raise
