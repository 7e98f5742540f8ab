"""`dso simulate PATH...`: label files (.npy grids, meshes) with the stability oracle."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from dso.config import SimSettings, load_settings
from dso.sim.verdict import SimStatus, Verdict


class ModeChoice(str, Enum):
    boxes = "boxes"
    decompose = "decompose"
    hull = "hull"


class UpChoice(str, Enum):
    auto = "auto"
    z = "z"
    y = "y"


def format_verdict(path: str, verdict: Verdict) -> str:
    """One human-readable line per input."""
    if verdict.status != SimStatus.ok:
        return f"{path}: {verdict.status.value.upper()} - {verdict.message}"
    label = "STABLE" if verdict.stable else "UNSTABLE"
    settle = f"{verdict.settle_time_s:.2f} s" if verdict.settle_time_s is not None else "-"
    return (
        f"{path}: {label} tilt {verdict.tilt_deg:.1f} deg, rotation {verdict.rotation_deg:.1f} deg, "
        f"stop {verdict.stop_reason.value}, settled {settle}, {verdict.steps} steps, "
        f"{verdict.mode} x{verdict.collision_geoms}, {verdict.elapsed_s * 1e3:.0f} ms"
    )


def settings_for_cli(
    config: Path | None,
    mode: ModeChoice | None,
    workers: int | None,
    up: UpChoice | None = None,
    scale: float | None = None,
) -> SimSettings:
    """SimSettings from the config file (or defaults) with command-line overrides."""
    settings = load_settings(config).sim
    update: dict = {}
    if mode is not None:
        update["mode"] = mode.value
    if workers is not None:
        update["workers"] = workers
    if up is not None:
        update["mesh_up"] = up.value
    if scale is not None:
        update["mesh_scale"] = scale
    return SimSettings.model_validate({**settings.model_dump(), **update})


def simulate_command(
    paths: Annotated[list[Path], typer.Argument(help="occupancy grids (.npy, bool N^3, x/y/z z-up) or meshes")],
    json_output: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    mode: Annotated[
        Optional[ModeChoice],
        typer.Option(help="geometry (default from config): boxes = exact solid (meshes: hull contact, voxel-solid mass); "
                     "decompose = CoACD (meshes, slow); hull = the paper's single hull"),
    ] = None,
    up: Annotated[
        Optional[UpChoice],
        typer.Option(help="meshes' up axis (sim.mesh_up): auto = y for .glb/.gltf (glTF is y-up), z otherwise"),
    ] = None,
    scale: Annotated[
        Optional[float], typer.Option(min=0.0, help="metres per mesh unit (sim.mesh_scale), e.g. 0.001 for mm")
    ] = None,
    workers: Annotated[Optional[int], typer.Option(help="worker processes; 0 = one per core")] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (a path, or a name under configs/), section `sim`")
    ] = None,
) -> None:
    """Simulate each input upright on flat ground and print its stability verdict.

    Exit status is 0 when every input was simulated (status ok), 1 otherwise.
    """
    try:
        settings = settings_for_cli(config, mode, workers, up, scale)
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
    from dso.sim.batch import label_batch  # MuJoCo loads only when the command runs

    verdicts = label_batch([str(p) for p in paths], settings, workers=settings.workers)
    for path, verdict in zip(paths, verdicts):
        if json_output:
            typer.echo(json.dumps({"input": str(path), **verdict.model_dump(mode="json")}))
        else:
            typer.echo(format_verdict(str(path), verdict))
    if any(v.status != SimStatus.ok for v in verdicts):
        raise typer.Exit(code=1)


app = typer.Typer(add_completion=False, help="Stability oracle")
app.command("simulate")(simulate_command)
