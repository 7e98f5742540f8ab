"""`dso simulate PATH...`: label files (.npy grids, meshes), folders or globs with the stability oracle.

On a folder or a glob it is a physical-soundness benchmark for any generator's outputs: a
progress bar, one JSON line per file (``--jsonl``) and a summary (% stable, mean tilt,
failures by reason) at the end.
"""

from __future__ import annotations

import glob
import json
import sys
from collections import Counter
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


# what a folder contributes (dso.sim.inputs: GRID_SUFFIXES | MESH_SUFFIXES; not imported, to keep this module light)
INPUT_SUFFIXES = frozenset({".npy", ".glb", ".gltf", ".obj", ".ply", ".stl", ".off"})


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files to judge: a folder -> every grid or mesh under it (sorted, recursive); an unexpanded glob
    (``"out/*.glb"``, ``"out/**/*.obj"``) -> its matches; anything else as given (a missing file is reported)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in INPUT_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no grid (.npy) or mesh files under {path}")
            out += found
        elif not path.exists() and glob.has_magic(str(path)):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True) if Path(m).is_file())
            if not matches:
                raise FileNotFoundError(f"no file matches {path}")
            out += matches
        else:
            out.append(path)
    return out


def _reason(message: str) -> str:
    """A failure's reason for the summary: its message up to the first colon or number, at most 60 characters."""
    head = message.split(":")[0]
    for index, char in enumerate(head):
        if char.isdigit():
            head = head[:index]
            break
    return (head.strip() or message)[:60]


def summarise(verdicts: list[Verdict]) -> str:
    """One paragraph: how many were judged, % stable among them, mean tilt, failures by status and reason."""
    judged = [v for v in verdicts if v.status == SimStatus.ok]
    stable = sum(v.stable for v in judged)
    lines = [f"summary: {len(verdicts)} input(s), {len(judged)} judged"]
    if judged:
        tilts = [v.tilt_deg for v in judged if v.tilt_deg is not None]
        elapsed = sorted(v.elapsed_s for v in judged)
        lines[0] += (
            f"; stable {stable}/{len(judged)} ({100.0 * stable / len(judged):.1f} %); "
            f"mean tilt {sum(tilts) / max(1, len(tilts)):.1f} deg; "
            f"median {elapsed[len(elapsed) // 2] * 1e3:.0f} ms per input"
        )
    failed = [v for v in verdicts if v.status != SimStatus.ok]
    if failed:
        by_status = Counter(v.status.value for v in failed)
        lines.append(f"failures: {len(failed)} ({', '.join(f'{k} {n}' for k, n in by_status.most_common())})")
        for (status, reason), n in Counter((v.status.value, _reason(v.message)) for v in failed).most_common(8):
            lines.append(f"  {n} x {status}: {reason}")
    else:
        lines.append("failures: none")
    return "\n".join(lines)


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
    jsonl: Annotated[
        Optional[Path], typer.Option("--jsonl", help="also write one JSON verdict per input to this file, as each finishes")
    ] = None,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="progress bar on stderr (default: when a terminal)")
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (a path, or a name under configs/), section `sim`")
    ] = None,
) -> None:
    """Simulate each input upright on flat ground and print its stability verdict.

    PATH may be a file, a folder (every .npy / mesh under it) or a quoted glob ("out/**/*.glb").
    With more than one input a summary follows (not with --json). Exit status is 0 when
    every input was simulated (status ok), 1 otherwise.
    """
    try:
        settings = settings_for_cli(config, mode, workers, up, scale)
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
    try:
        inputs = expand_inputs(paths)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="PATH") from exc
    from tqdm import tqdm

    from dso.sim.batch import label_batch  # MuJoCo loads only when the command runs

    show = progress if progress is not None else (len(inputs) > 1 and sys.stderr.isatty())
    bar = tqdm(total=len(inputs), desc="simulating", unit="input", file=sys.stderr, disable=not show)
    sink = jsonl.open("w") if jsonl is not None else None

    def on_result(index: int, verdict: Verdict) -> None:
        bar.update(1)
        if sink is not None:
            sink.write(json.dumps({"input": str(inputs[index]), **verdict.model_dump(mode="json")}) + "\n")
            sink.flush()

    try:
        verdicts = label_batch([str(p) for p in inputs], settings, workers=settings.workers, on_result=on_result)
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    for path, verdict in zip(inputs, verdicts):
        if json_output:
            typer.echo(json.dumps({"input": str(path), **verdict.model_dump(mode="json")}))
        else:
            typer.echo(format_verdict(str(path), verdict))
    if len(inputs) > 1 and not json_output:  # --json: stdout stays pure JSON lines
        typer.echo(summarise(verdicts))
    if any(v.status != SimStatus.ok for v in verdicts):
        raise typer.Exit(code=1)


app = typer.Typer(add_completion=False, help="Stability oracle")
app.command("simulate")(simulate_command)
