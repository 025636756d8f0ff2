"""Prometheus: one scrape target per worker, at the server's ``/-/metrics``.

The rendered file is a ``scrape_configs`` fragment; merge its job into
prometheus.yml. The workers answer ``/-/metrics`` only to addresses in the
server's ``internal_allow`` (loopback by default): add the Prometheus server's
address there when it runs on another machine.
"""

from __future__ import annotations

import json

from .config import DeployConfig
from .nginx import host_port


def render(config: DeployConfig, header: str) -> str:
    """The scrape configuration: one static_configs entry per host, labelled with its name."""
    lines = [
        "scrape_configs:",
        f"  - job_name: {json.dumps(config.app)}",
        f"    metrics_path: {json.dumps(config.internal_prefix + 'metrics')}",
        f"    scrape_interval: {json.dumps(config.prometheus.scrape_interval)}",
        "    static_configs:",
    ]
    for host in config.hosts:
        targets = ", ".join(json.dumps(host_port(host.address, port)) for port in host.port_list)
        lines += [
            f"      - targets: [{targets}]",
            f"        labels: {{host: {json.dumps(host.label)}}}",
        ]
    return header + "\n".join(lines) + "\n"
