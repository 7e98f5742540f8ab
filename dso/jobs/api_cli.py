"""``dso api``: serve the HTTP API on its own, against a running loop's Redis (registered in dso/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def api(
    redis: str | None = typer.Option(None, "--redis", help="Redis URL of the loop (default: broker.redis_url, else an embedded Valkey)."),
    host: str | None = typer.Option(None, "--host", help="Bind address (default: api.host)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: api.port)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (a path, or a name under configs/)."),
) -> None:
    """Serve the HTTP API: prompt uploads, adapter downloads, /v1/stats, /healthz, /readyz, /metrics."""
    import logging

    from dso.api.app import create_app
    from dso.api.server import ApiServer, PortInUseError
    from dso.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings(config or "tiny")
    if redis is not None:
        settings.broker.redis_url = redis
    host = host or settings.api.host
    port = settings.api.port if port is None else port
    app = create_app(settings)  # opens (and on exit closes) its own broker
    server = ApiServer(app, host=host, port=port, log_level="info")
    try:
        server.start(timeout_s=30.0)
    except PortInUseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"DSO API on http://{host}:{server.port} (docs at /docs, metrics at /metrics); Ctrl-C stops")
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
