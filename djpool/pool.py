"""A small, engine-independent connection pool with idle-aware liveness.

The pool knows nothing about MySQL or Django. An engine hands it a
:class:`Driver` (how to open, ping, reset and close one raw connection, and how
to recognise a disconnect) and gets back raw connections from
:meth:`Pool.checkout` and gives them back with :meth:`Pool.checkin`.

Policy, all in one place:

* ``size`` connections are kept idle between uses; up to ``max_overflow`` more
  are opened under contention and closed when handed back. A caller that finds
  every connection busy waits at most ``timeout`` seconds, then gets
  :class:`PoolTimeout`, which names the limits.
* Liveness is judged by *idle time*, not age: a connection idle longer than
  ``ping_after`` seconds is pinged before it is handed out; one idle near the
  server's own idle timeout (reported by the driver on connect) is not pinged
  at all but replaced, because the server may close it at any moment.
  ``max_lifetime`` optionally retires connections by age.
* Every handed-out connection is returned in a known state: the driver's
  ``reset`` decides whether it can be reused; when it cannot, it is discarded.
* The pool belongs to one process. A pool used after ``fork()`` notices the new
  process id and refuses to touch its parent's connections
  (see :func:`forget_inherited_connections`).

When *not* to use it: for connection multiplexing across processes use a
server-side proxy (ProxySQL, MaxScale); this pool only keeps one process's
connections healthy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

logger = logging.getLogger("djpool")

C = TypeVar("C")

#: A connection idle for more than this fraction of the server's idle timeout
#: is replaced instead of pinged: the server may close it while we talk to it.
IDLE_TIMEOUT_SAFETY = 0.9


class PoolTimeout(Exception):
    """Every connection of the pool stayed busy for ``timeout`` seconds."""


class Driver(Protocol[C]):
    """What a database engine supplies so that the pool can manage its connections."""

    def connect(self) -> C:
        """Open one new raw connection."""

    def ping(self, conn: C) -> None:
        """Raise if ``conn`` cannot talk to the server."""

    def reset(self, conn: C, record: Record) -> str | None:
        """Bring ``conn`` back to a clean state; return a discard reason, or None if reusable."""

    def close(self, conn: C) -> None:
        """Close ``conn``; must not raise."""

    def server_idle_timeout(self, conn: C) -> float | None:
        """Seconds of idleness after which the server drops ``conn``, if known."""

    def connection_id(self, conn: C) -> int | None:
        """The server-side id of ``conn`` (free: no round trip)."""


@dataclass
class Record:
    """What the pool remembers about one raw connection."""

    conn: Any
    created_at: float
    last_used: float
    server_id: int | None = None
    server_idle_timeout: float | None = None
    #: Set by the engine when the connection failed with a disconnect error.
    broken: str | None = None
    #: Engine-owned notes about session state (e.g. "transaction opened").
    flags: set[str] = field(default_factory=set)
    #: Set by the engine once its per-connection set-up statements ran.
    prepared: bool = False
    #: Set by the engine (monotonic time) whenever it sends a statement. The
    #: server's idle clock starts at the last statement, not at the hand-back,
    #: so idleness is measured from here when the engine reports it.
    last_statement: float | None = None
    uses: int = 0
    #: Handed back in place (see :meth:`Pool.hold`): idle, but still with its caller.
    held: bool = False


@dataclass(frozen=True)
class PoolOptions:
    """The pool's policy. Every field is documented in docs/djpool.md."""

    size: int = 1
    max_overflow: int = 0
    timeout: float = 10.0
    ping_after: float = 5.0
    max_lifetime: float | None = None
    max_idle: float | None = None


class Pool(Generic[C]):
    """Connections for one database alias in one process. Thread-safe."""

    def __init__(self, name: str, driver: Driver[C], options: PoolOptions) -> None:
        self.name = name
        self.driver = driver
        self.options = options
        self.pid = os.getpid()
        self.closed = False
        self._idle: list[Record] = []  # LIFO: the warmest connection is reused first
        self._in_use: dict[int, Record] = {}
        self._cond = threading.Condition(threading.Lock())
        self._opening = 0
        self.counters: Counter[str] = Counter()
        self.discards: Counter[str] = Counter()
        self._warned_timeout = False

    # -- public API -------------------------------------------------------

    def checkout(self) -> C:
        """Hand out a live connection, opening one if needed (see module doc)."""
        self._check_pid()
        deadline: float | None = None
        record: Record | None
        with self._cond:
            self.counters["checkouts"] += 1
            while True:
                if self.closed:
                    raise PoolTimeout(f"pool {self.name!r} is closed")
                if self._idle:
                    record = self._idle.pop()
                    self._in_use[id(record.conn)] = record
                    break
                if len(self._in_use) + self._opening < self.options.size + self.options.max_overflow:
                    self._opening += 1
                    record = None
                    break
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.options.timeout
                    self.counters["waits"] += 1
                if now >= deadline:
                    self.counters["timeouts"] += 1
                    raise PoolTimeout(
                        f"djpool {self.name!r}: no connection free after waiting "
                        f"{self.options.timeout:g} s (size={self.options.size}, "
                        f"max_overflow={self.options.max_overflow}, all "
                        f"{len(self._in_use)} in use); raise OPTIONS['pool']['size'] or "
                        f"['max_overflow'] for a threaded host, or the database-side "
                        f"limit if that is what holds them"
                    )
                self._cond.wait(deadline - now)
        if record is None:
            return self._open_new(replacing=None)
        return self._revive(record)

    def checkin(self, conn: C) -> None:
        """Take back a connection handed out by :meth:`checkout`."""
        if os.getpid() != self.pid:
            return  # the parent's connection: not ours to reset or close
        with self._cond:
            record = self._in_use.pop(id(conn), None)
        if record is None:
            # Not ours (pool was replaced, or a double checkin): just close it.
            self.driver.close(conn)
            return
        reason = record.broken
        if reason is None:
            try:
                reason = self.driver.reset(conn, record)
            except Exception as exc:  # a reset that fails leaves unknown state
                reason = f"reset failed: {exc}"
        record.flags.clear()
        now = time.monotonic()
        if reason is None and self.closed:
            reason = "pool closed"
        if reason is None and self._too_old(record, now):
            reason = "max_lifetime"
        with self._cond:
            if reason is None and len(self._idle) >= self.options.size:
                reason = "overflow"
            if reason is None:
                last = record.last_statement
                record.last_used = now if last is None else min(last, now)
                record.last_statement = None
                self._idle.append(record)
            self._cond.notify()
        if reason is not None:
            self._discard(record, reason)

    def hold(self, conn: C) -> bool:
        """Hand ``conn`` back *in place*: cleaned as by :meth:`checkin`, but left with
        its caller for its next use (:meth:`take_held`), skipping a checkout.

        Only for a caller that is the one thread using this pool's connections
        (see :func:`hold_on_this_thread`): a held connection is not available to
        other threads. False (nothing done) when ``conn`` cannot be reused: then
        the caller hands it back with :meth:`checkin`, which discards it.
        """
        if os.getpid() != self.pid or self.closed:
            return False
        record = self._in_use.get(id(conn))
        if record is None or record.broken is not None:
            return False
        if record.held:
            return True
        try:
            reason = self.driver.reset(conn, record)
        except Exception:
            return False
        now = time.monotonic()
        if reason is not None or self._too_old(record, now):
            return False
        record.flags.clear()
        last = record.last_statement
        record.last_used = now if last is None else min(last, now)
        record.last_statement = None
        record.held = True
        return True

    def take_held(self, conn: C) -> C:
        """Use a held ``conn`` again: the liveness rules of :meth:`checkout` apply.

        Returns ``conn``, or the connection that replaced it (after a failed
        ping, or when it idled too long or grew too old).
        """
        self._check_pid()
        record = self._in_use.get(id(conn))
        with self._cond:
            self.counters["checkouts"] += 1
        if record is None:  # the pool was closed and cleared meanwhile
            with self._cond:
                self._opening += 1
            return self._open_new(replacing=None)
        record.held = False
        return self._revive(record)

    def release_held(self, conn: C) -> None:
        """A held ``conn`` goes back to the idle list (its caller closes)."""
        record = self._in_use.get(id(conn))
        if record is not None:
            record.held = False
        self.checkin(conn)

    def mark_broken(self, conn: C, reason: str) -> None:
        """Note that ``conn`` failed with a disconnect: it will be discarded on checkin."""
        with self._cond:
            record = self._in_use.get(id(conn))
        if record is not None and record.broken is None:
            record.broken = reason

    def replace(self, conn: C, reason: str) -> C:
        """Discard a checked-out ``conn`` that just failed, and hand out a fresh one."""
        return self._swap(conn, reason, replacing=reason)

    def record(self, conn: C) -> Record | None:
        """The pool's record of a checked-out connection (None if unknown)."""
        return self._in_use.get(id(conn))

    def close(self) -> None:
        """Close idle connections now; busy ones are closed when handed back."""
        with self._cond:
            self.closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        if os.getpid() != self.pid:
            return
        for record in idle:
            self._discard(record, "pool closed")

    def stats(self) -> dict[str, Any]:
        """Counters and gauges, safe to read from any thread."""
        with self._cond:
            held = [r for r in self._in_use.values() if r.held]
            idle = list(self._idle) + held
            busy = [r for r in self._in_use.values() if not r.held]
            counters = dict(self.counters)
            discards = dict(self.discards)
        now = time.monotonic()
        return {
            "size": self.options.size,
            "max_overflow": self.options.max_overflow,
            "idle": len(idle),
            "in_use": len(busy),
            "held": len(held),
            "connection_ids": [r.server_id for r in busy + idle],
            "server_idle_timeout": next(
                (r.server_idle_timeout for r in busy + idle if r.server_idle_timeout), None
            ),
            "oldest_age": round(max((now - r.created_at for r in busy + idle), default=0.0), 3),
            **{k: counters.get(k, 0) for k in COUNTERS},
            "discards": discards,
        }

    # -- internals ----------------------------------------------------------

    def _check_pid(self) -> None:
        if os.getpid() != self.pid:
            raise RuntimeError(
                f"djpool {self.name!r} was created in process {self.pid} and used in "
                f"{os.getpid()}; use djpool.pool.pool_for() to get this process's pool"
            )

    def _open_new(self, replacing: str | None) -> C:
        try:
            conn = self.driver.connect()
        except BaseException:
            with self._cond:
                self._opening -= 1
                self._cond.notify()
            raise
        now = time.monotonic()
        record = Record(conn=conn, created_at=now, last_used=now)
        record.server_id = self.driver.connection_id(conn)
        try:
            record.server_idle_timeout = self.driver.server_idle_timeout(conn)
        except Exception:
            # The connection works or the next statement will say otherwise;
            # without the timeout we fall back to pinging by ping_after.
            logger.warning("djpool %s: could not read the server's idle timeout", self.name)
        self._warn_about_timeouts(record)
        with self._cond:
            self._opening -= 1
            self._in_use[id(conn)] = record
            self.counters["connects"] += 1
            if replacing is not None:
                self.counters["reconnects"] += 1
        record.uses = 1
        if replacing is not None:
            logger.info(
                "djpool %s: reconnected (connection id %s) after: %s",
                self.name,
                record.server_id,
                replacing,
            )
        return conn

    def _revive(self, record: Record) -> C:
        """Decide whether an idle connection can be handed out; replace it if not."""
        now = time.monotonic()
        idle = now - record.last_used
        max_idle = self._max_idle(record)
        if self._too_old(record, now):
            return self._swap(record.conn, "max_lifetime", replacing=None)
        if max_idle is not None and idle >= max_idle:
            return self._swap(record.conn, "idle_timeout", replacing=None)
        if idle >= self.options.ping_after:
            with self._cond:
                self.counters["pings"] += 1
            try:
                self.driver.ping(record.conn)
            except Exception as exc:
                with self._cond:
                    self.counters["ping_failures"] += 1
                reason = f"ping failed: {exc}"
                return self._swap(record.conn, reason, replacing=reason)
        record.uses += 1
        with self._cond:
            self.counters["reuses"] += 1
        return record.conn  # type: ignore[no-any-return]

    def _swap(self, conn: C, reason: str, replacing: str | None) -> C:
        """Discard checked-out ``conn`` and open its successor in the same slot.

        ``replacing`` (the failure) counts the new one as a reconnect; a
        connection retired by policy (age, idleness) is replaced quietly.
        """
        with self._cond:
            record = self._in_use.pop(id(conn), None)
            self._opening += 1
        if record is not None:
            self._discard(record, reason)
        return self._open_new(replacing=replacing)

    def _max_idle(self, record: Record) -> float | None:
        limits = [self.options.max_idle] if self.options.max_idle is not None else []
        if record.server_idle_timeout:
            limits.append(record.server_idle_timeout * IDLE_TIMEOUT_SAFETY)
        return min(limits) if limits else None

    def _too_old(self, record: Record, now: float) -> bool:
        lifetime = self.options.max_lifetime
        return lifetime is not None and now - record.created_at >= lifetime

    def _discard(self, record: Record, reason: str) -> None:
        key = reason.split(":", 1)[0]
        with self._cond:
            self.discards[key] += 1
            self.counters["discarded"] += 1
        log = logger.debug if key in QUIET_DISCARDS else logger.info
        log("djpool %s: discarded connection id %s (%s)", self.name, record.server_id, reason)
        self.driver.close(record.conn)

    def _warn_about_timeouts(self, record: Record) -> None:
        server = record.server_idle_timeout
        if self._warned_timeout or not server:
            return
        self._warned_timeout = True
        for option in ("max_lifetime", "max_idle"):
            value = getattr(self.options, option)
            if value is not None and value > server:
                logger.warning(
                    "djpool %s: %s=%gs exceeds the server's wait_timeout of %gs; idle "
                    "connections are replaced at %gs instead",
                    self.name,
                    option,
                    value,
                    server,
                    server * IDLE_TIMEOUT_SAFETY,
                )


#: Counter names reported by :meth:`Pool.stats` (always present, zero when unused).
COUNTERS = (
    "connects",
    "reuses",
    "checkouts",
    "pings",
    "ping_failures",
    "reconnects",
    "discarded",
    "waits",
    "timeouts",
)

#: Discard reasons that are routine, logged at DEBUG instead of INFO.
QUIET_DISCARDS = frozenset({"overflow", "pool closed"})


# -- holding connections between requests ---------------------------------------

_holder: list[tuple[int, int]] = []  # [(pid, thread ident)] of the thread that may hold


def hold_on_this_thread() -> None:
    """Declare the calling thread the only one of this process that uses the pools.

    For a server that runs all of Django on one thread (this project's
    server.py does). Connections that thread hands back at the end of a request
    are then held in place (:meth:`Pool.hold`) instead of going through a full
    checkin and checkout: the same cleaning at the end of the request and the
    same idle-aware liveness check before the next use, without the cost of
    Django's connect and close. Other threads, if any, keep the ordinary
    behaviour, but the held connection is not available to them.
    """
    _holder[:] = [(os.getpid(), threading.get_ident())]


def may_hold() -> bool:
    """Whether the calling thread was declared with :func:`hold_on_this_thread`."""
    return bool(_holder) and _holder[0] == (os.getpid(), threading.get_ident())


# -- the process-wide registry --------------------------------------------------

_registry: dict[tuple[str, int], Pool[Any]] = {}
_registry_lock = threading.Lock()


def pool_for(name: str, key: object, factory: Callable[[], Pool[Any]]) -> Pool[Any]:
    """This process's pool for ``name``; a new one when ``key`` (its settings) changed."""
    pid = os.getpid()
    with _registry_lock:
        pool = _registry.get((name, pid))
        if pool is not None and getattr(pool, "_key", None) == key and not pool.closed:
            return pool
        old, pool = pool, factory()
        pool._key = key  # type: ignore[attr-defined]
        _registry[(name, pid)] = pool
    if old is not None:
        old.close()
    return pool


def existing_pool(name: str) -> Pool[Any] | None:
    """This process's pool for ``name`` if one was created."""
    return _registry.get((name, os.getpid()))


def close_pool(name: str) -> None:
    """Close and forget this process's pool for ``name`` (idle connections close now)."""
    with _registry_lock:
        pool = _registry.pop((name, os.getpid()), None)
    if pool is not None:
        pool.close()


def all_pools() -> dict[str, Pool[Any]]:
    """This process's pools by name."""
    pid = os.getpid()
    return {name: pool for (name, p), pool in list(_registry.items()) if p == pid}


def forget_inherited_connections(neutralise: Callable[[Any], None]) -> None:
    """In a forked child: drop the parent's pools without touching their connections.

    ``neutralise`` is called on each inherited raw connection so that the
    child can never write to the socket it shares with the parent, not even
    when the object is finally garbage-collected.
    """
    # Runs in the child right after fork(): only this thread exists, and a lock
    # another thread held at fork time would never be released, so take none.
    global _registry_lock
    _registry_lock = threading.Lock()
    pid = os.getpid()
    inherited = [pool for (_, p), pool in _registry.items() if p != pid]
    for key in [k for k in _registry if k[1] != pid]:
        del _registry[key]
    for pool in inherited:
        pool._cond = threading.Condition(threading.Lock())
        records = list(pool._idle) + list(pool._in_use.values())
        pool._idle.clear()
        pool._in_use.clear()
        pool.closed = True
        for record in records:
            neutralise(record.conn)
