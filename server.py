#!/usr/bin/env python3
"""Run the Django project on Tornado: ``python server.py --port=8001``.

One process serves one port with one persistent database connection; run
several behind nginx (see README.md), each under supervisor or systemd, or
all from one command with ``--ports=8001-8004``. ``python server.py --help`` lists every
flag with its default; docs/server-options.md explains them.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from appserver.config import ConfigError, parse
from appserver.launcher import run_launcher
from appserver.worker import configure_logging, run_worker


def main(argv: list[str]) -> int:
    """Parse the flags and run one worker; return the exit code."""
    try:
        options = parse(argv)
    except ConfigError as exc:
        print(f"server.py: error: {exc}", file=sys.stderr)
        return 2
    if options.ports and options.fd is None:
        configure_logging(options, "launcher")
        return run_launcher(options, argv)
    return run_worker(options)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
