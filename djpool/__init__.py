"""djpool: one healthy, persistent MySQL connection per process for Django.

``ENGINE: "djpool.backends.mysql"`` with ``OPTIONS: {"pool": True}``. The pool
logic lives in :mod:`djpool.pool` and knows nothing about MySQL; the engine in
:mod:`djpool.backends.mysql` plugs it into Django's backend hooks.
"""

from __future__ import annotations

from typing import Any

from .pool import PoolTimeout, all_pools

__all__ = ["PoolTimeout", "stats"]


def stats() -> dict[str, dict[str, Any]]:
    """Counters and gauges of this process's pools, by database alias."""
    return {name: pool.stats() for name, pool in all_pools().items()}
