"""``dso run``: the whole loop on this machine (local Ray, embedded Valkey unless ``--redis``)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from dso.jobs.session import run_loop, session_settings
from dso.jobs.summary import LoopSummary


def run_local(
    config: str | Path | None = None,
    duration_s: float | None = None,
    redis_url: str | None = None,
    console: Console | None = None,
    api: bool | None = None,
    host: str | None = None,
    port: int | None = None,
) -> LoopSummary:
    settings = session_settings(config, duration_s, redis_url, api, host=host, port=port)
    return run_loop(settings, ray_address=None, console=console)
