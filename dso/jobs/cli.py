"""The loop's CLI commands: ``dso run`` and ``dso worker simulate`` (registered in dso/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

worker_app = typer.Typer(no_args_is_help=True, help="Standalone loop workers that join a running loop over Redis.")


def run(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (a path, or a name under configs/)."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds (default: loop.duration_s, else Ctrl-C)."),
    redis: str | None = typer.Option(None, "--redis", help="Redis URL (default: an embedded Valkey in the run dir)."),
    api: bool | None = typer.Option(None, "--api/--no-api", help="Serve the HTTP API on api.host:api.port (default: loop.api_enabled, on)."),
    host: str | None = typer.Option(None, "--host", help="Address the API and every metrics server bind to (default: api.host)."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535, help="API port (default: api.port; 0: any free port)."),
) -> None:
    """Run the self-improving loop locally: generators, simulators and the learner on a local Ray, plus the HTTP API.

    Exit status: 0 after a clean run; 1 when a role failed (crashed past loop.restart_budget),
    work was left unlabelled after the drain, or the summary could not be read in full; 2 when
    the loop cannot start (API port busy, run directory served by another process).
    """
    from dso.api.server import PortInUseError
    from dso.broker.server import BrokerServerError
    from dso.jobs.local import run_local

    try:
        summary = run_local(config, duration, redis, api=api, host=host, port=port)
    except (PortInUseError, BrokerServerError) as exc:  # expected conditions: one line, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if summary is None:
        raise typer.Exit(code=1)
    if summary.problems():
        typer.echo(f"error: the run did not end cleanly: {'; '.join(summary.problems())}", err=True)
        raise typer.Exit(code=1)


@worker_app.command("simulate")
def simulate_worker(
    redis: str = typer.Option(..., "--redis", help="URL of the loop's Redis (printed by `dso run`)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (must match the loop's broker and sim sections)."),
    name: str | None = typer.Option(None, help="Consumer name (default: simulator-<host>-<pid>)."),
    max_items: int | None = typer.Option(None, help="Exit after labelling this many samples."),
) -> None:
    """Label samples from a running loop's queue with the MuJoCo oracle, until Ctrl-C."""
    import logging

    from dso.jobs.worker import run_simulator_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    labelled = run_simulator_worker(redis, config, name, max_items)
    typer.echo(f"labelled {labelled} samples")
