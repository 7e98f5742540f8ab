"""Serving the app with uvicorn: in the foreground (``dso api``) or in a thread (``dso run``, tests, bench).

The server also announces its own ``/metrics`` in the run's scrape targets, so the
API's HTTP service discovery lists the API next to the loop's other processes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from dso import telemetry

log = logging.getLogger(__name__)


class PortInUseError(OSError):
    """The API's port is taken by another process (another ``dso run`` or ``dso api``?)."""


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` with what to do when ``host:port`` cannot be bound (port 0 always can)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"cannot serve the API on {host}:{port}: {exc.strerror or exc}. Another `dso run` or `dso api` "
                f"may be using it: pick another port (--port, api.port, or DSO__API__PORT=...), or turn the "
                f"API off for a loop with DSO__LOOP__API_ENABLED=false"
            ) from None


class ApiServer:
    """A uvicorn server for ``app`` on ``host:port`` (port 0: any free port), run in a daemon thread."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.app = app
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.host = host
        self._thread: threading.Thread | None = None
        self._announcer: telemetry.TargetAnnouncer | None = None
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (kept after ``stop()``, so a stopped server can still say where it was)."""
        if self._bound_port is not None:
            return self._bound_port
        servers = getattr(self.server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the API server is not listening yet")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0, announce: bool = True) -> ApiServer:
        check_port_free(self.host, self.server.config.port)
        self._thread = threading.Thread(target=self.server.run, name="dso-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the API server on {self.host} exited during start-up (port in use?)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the API server did not start within {timeout_s} s")
            time.sleep(0.02)
        self._bound_port = self.port
        if announce:
            self._announce()
        return self

    def _announce(self) -> None:
        ctx = self.app.state.ctx
        address = f"{telemetry.advertised_host(self.host)}:{self.port}"
        targets = telemetry.MetricsTargets(ctx.broker.targets, ctx.settings.target_ttl_s)
        try:
            self._announcer = telemetry.TargetAnnouncer(targets, "api", address).start()
        except Exception as exc:  # noqa: BLE001 - discovery is a convenience; serving matters more
            log.warning("could not announce the API's metrics target: %s", exc)

    def wait(self) -> None:
        """Block until the server thread ends (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def stop(self) -> None:
        if self._announcer is not None:
            self._announcer.stop()
            self._announcer = None
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
