"""Start a loop process's Prometheus exporter without letting metrics take the process down.

Every loop process (Ray actor or ``dso worker simulate``) calls
:func:`start_exporter` once: it serves ``/metrics`` on ``$DSO_METRICS_PORT`` (the
Helm chart's ``dso-metrics`` port) or ``api.metrics_port`` (next free port in
``api.metrics_port_span`` when several processes share a host) and announces it
for the API's service discovery. A process that cannot bind a port still does
its work: the failure is logged and the exporter is simply absent.
"""

from __future__ import annotations

import logging
from typing import Any

from dso import telemetry
from dso.config import Settings

log = logging.getLogger(__name__)


def start_exporter(component: str, settings: Settings, broker: Any) -> telemetry.ProcessMetrics | None:
    """Serve and announce this process's metrics as ``component``; None (logged) when no port is free."""
    try:
        exporter = telemetry.start_process_metrics(component, settings.api, broker)
    except OSError as exc:
        log.warning("%s: no Prometheus exporter in this process: %s", component, exc)
        return None
    log.info("%s: Prometheus metrics at %s", component, exporter.server.url)
    return exporter


def stop_exporter(exporter: telemetry.ProcessMetrics | None) -> None:
    """Withdraw the announcement and close the port; safe on None and on a broker that is gone."""
    if exporter is None:
        return
    try:
        exporter.stop()
    except Exception as exc:  # noqa: BLE001 - shutdown must go on
        log.warning("could not stop the metrics exporter cleanly: %s", exc)
