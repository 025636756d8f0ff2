"""Reading ``DATABASES[alias]["OPTIONS"]["pool"]`` into :class:`~djpool.pool.PoolOptions`.

Every key is checked: a typo or a contradictory combination raises
``ImproperlyConfigured`` naming it, instead of being silently ignored.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .pool import PoolOptions

#: One line of documentation per option; docs/djpool.md is checked against it.
OPTION_DOCS = {
    "size": "connections kept open between uses (1 serves a single-threaded worker)",
    "max_overflow": "extra connections opened under contention, closed when handed back",
    "timeout": "seconds a checkout waits for a free connection before PoolTimeout",
    "ping_after": "seconds of idleness after which a connection is pinged before reuse",
    "max_lifetime": "seconds after which a connection is retired, however busy (None: never)",
    "max_idle": "seconds of idleness after which a connection is replaced without a ping "
    "(None: 90% of the server's wait_timeout, read on connect)",
}


def _number(name: str, value: Any, *, minimum: float, allow_none: bool, integer: bool) -> Any:
    if value is None and allow_none:
        return None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        wanted = "a whole number" if integer else "a number of seconds"
        if allow_none:
            wanted += " or None"
        raise ImproperlyConfigured(f"djpool: OPTIONS['pool']['{name}'] must be {wanted}, got {value!r}")
    if value < minimum:
        raise ImproperlyConfigured(f"djpool: OPTIONS['pool']['{name}'] must be >= {minimum:g}, got {value!r}")
    return value


def parse_pool_options(raw: Any, settings_dict: dict[str, Any], alias: str) -> PoolOptions:
    """Validate the ``pool`` option (``True`` or a dict) against Django's settings."""
    if raw is True or raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(
            f"djpool: DATABASES[{alias!r}]['OPTIONS']['pool'] must be True, False or a dict, got {raw!r}"
        )
    known = {f.name for f in fields(PoolOptions)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ImproperlyConfigured(
            f"djpool: unknown key(s) {', '.join(map(repr, unknown))} in "
            f"DATABASES[{alias!r}]['OPTIONS']['pool']; known keys: {', '.join(sorted(known))}"
        )
    values = {
        "size": _number("size", raw.get("size", 1), minimum=1, allow_none=False, integer=True),
        "max_overflow": _number(
            "max_overflow", raw.get("max_overflow", 0), minimum=0, allow_none=False, integer=True
        ),
        "timeout": _number("timeout", raw.get("timeout", 10.0), minimum=0, allow_none=False, integer=False),
        "ping_after": _number(
            "ping_after", raw.get("ping_after", 5.0), minimum=0, allow_none=False, integer=False
        ),
        "max_lifetime": _number(
            "max_lifetime", raw.get("max_lifetime"), minimum=1, allow_none=True, integer=False
        ),
        "max_idle": _number("max_idle", raw.get("max_idle"), minimum=1, allow_none=True, integer=False),
    }
    if values["max_idle"] is not None and values["ping_after"] >= values["max_idle"]:
        raise ImproperlyConfigured(
            f"djpool: OPTIONS['pool']['ping_after'] ({values['ping_after']}) must be below "
            f"['max_idle'] ({values['max_idle']}): a connection is replaced before it would be pinged"
        )
    max_age = settings_dict.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        raise ImproperlyConfigured(
            f"djpool: DATABASES[{alias!r}]['CONN_MAX_AGE'] is {max_age!r}; with "
            f"OPTIONS['pool'] it must be 0, because the pool keeps connections open and "
            f"Django must hand each one back after every request (remove CONN_MAX_AGE, "
            f"or turn the pool off)"
        )
    if settings_dict.get("CONN_HEALTH_CHECKS"):
        # Django's health check pings before the first query of each request;
        # with the pool that is exactly "ping on every checkout".
        values["ping_after"] = 0.0
    return PoolOptions(**values)
