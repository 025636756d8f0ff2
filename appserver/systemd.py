"""The two systemd protocols a worker speaks, in the standard library only.

* ``sd_notify``: datagrams to ``$NOTIFY_SOCKET`` — ``READY=1`` once listening,
  ``STOPPING=1`` when draining, ``WATCHDOG=1`` periodically when
  ``$WATCHDOG_USEC`` is set. The ``--ports`` launcher gives each of its
  workers a notify socket of its own and listens the same way systemd does.
* socket activation: ``$LISTEN_FDS`` listening sockets starting at fd 3, when
  ``$LISTEN_PID`` is this process.

Outside systemd (no variables set) every function here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger("appserver.systemd")

SD_LISTEN_FDS_START = 3


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; False if there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        logger.warning("sd_notify(%r) to %s failed: %s", state, address, exc)
        return False


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the manager's timeout), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
        return None


def listen_sockets() -> list[socket.socket]:
    """Sockets passed by socket activation (empty when not activated).

    The variables are removed afterwards so that child processes do not
    mistake the sockets for their own.
    """
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if not count or pid != str(os.getpid()):
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets
