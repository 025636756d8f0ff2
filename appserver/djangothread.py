"""Where a worker runs Django: on the IOLoop thread, or on a thread of its own.

Django refuses database calls on a thread with a running event loop, and keeps
its per-thread state (its connections) in context variables. Every piece of
Django code of a worker, from ``django.setup()`` to the last ``close()``, goes
through one :class:`DjangoRunner`, one job at a time:

* :class:`InlineDjango` (``--django_mode=inline``, the default) is the classic
  single-threaded recipe: Django runs on the IOLoop thread itself, with the
  running loop hidden from Django's async-safety check for the duration of
  each call, and every call made in one ``contextvars.Context``. No hand-off,
  no second thread touching the same objects (CPython 3.11 keeps reference
  counts in the objects, so two threads taking turns on two cores pass cache
  lines back and forth); the price is that nothing else on the loop runs while
  Django does (the README's 'Where Django runs' has the table).
* :class:`DjangoThread` (``--django_mode=thread``) is one dedicated thread,
  while the IOLoop thread keeps reading requests, answering ``/-/health`` and
  writing responses. The hand-off is a plain queue one way and
  ``call_soon_threadsafe`` the other: one thread switch per request, no
  executor futures. Results finished while the loop has not yet picked up the
  previous ones ride along with them: one wake-up of the loop delivers all of
  them, in order.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import collections
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_STOP = object()


class DjangoRunner:
    """Where a worker runs Django: what both modes share (see the module doc)."""

    #: True when Django runs on the IOLoop thread (nothing else runs meanwhile).
    inline = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Jobs submitted and not yet finished (running one included). Loop thread only.
        self.pending = 0
        #: Of those, the server's own jobs (health checks, start-up, shutdown): submit().
        self.internal = 0
        #: monotonic() when the running job started, None when idle.
        self.busy_since: float | None = None
        #: The running job's label (e.g. the request), None when idle.
        self.current: object | None = None

    @property
    def ident(self) -> int | None:
        """The id of the thread that runs Django, to find its stack in ``sys._current_frames()``."""
        raise NotImplementedError

    def call(
        self, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None], label: object = ""
    ) -> None:
        """Run ``fn()`` where Django runs, then ``done(result, error)`` on the loop thread.

        ``label`` (anything with a ``str()``) names the job in stuck-request reports.
        """
        raise NotImplementedError

    def stop(self) -> None:
        """Let queued jobs finish, then stop."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait until stopped; True if it did."""
        return True

    def _run_job(self, fn: Callable[[], Any], label: object) -> tuple[Any, BaseException | None]:
        self.busy_since = time.monotonic()
        self.current = label
        try:
            return fn(), None
        except BaseException as exc:  # delivered to the caller's done()
            return None, exc
        finally:
            self.busy_since = None
            self.current = None

    def submit(self, fn: Callable[[], Any], label: object = "") -> asyncio.Future[Any]:
        """Run one of the server's own jobs where Django runs; call from the loop thread.

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


class DjangoThread(DjangoRunner):
    """A single worker thread fed from the event loop (--django_mode=thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "django") -> None:
        super().__init__(loop)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Finished jobs not yet delivered on the loop, and whether a delivery is scheduled.
        self._results: collections.deque[tuple[Any, Any, BaseException | None]] = collections.deque()
        self._wake_scheduled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def call(
        self, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None], label: object = ""
    ) -> None:
        # The fast path for requests: no future, no task, one wake-up each way.
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
            result, error = self._run_job(fn, label)
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


class InlineDjango(DjangoRunner):
    """Django on the IOLoop thread itself (--django_mode=inline): the classic recipe."""

    inline = True

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._ident = threading.get_ident()
        # Django keeps its per-thread state (connections among it) in contextvars,
        # and on the loop every client connection's callbacks and every task run in
        # a context of their own: one context for all of Django's calls makes them
        # see one thread's state, as the Django thread does.
        self._context = contextvars.Context()

    @property
    def ident(self) -> int | None:
        return self._ident

    def call(
        self, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None], label: object = ""
    ) -> None:
        self.pending += 1
        # Django refuses database work in a thread with a running event loop; the
        # loop waits for this call, so for its duration there is none to protect.
        running = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            result, error = self._context.run(self._run_job, fn, label)
        finally:
            asyncio.events._set_running_loop(running)
            self.pending -= 1
        done(result, error)
