"""The ``dso`` command. Each sub-command imports its stage lazily so ``dso --help`` stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Direct Simulation Optimization for image-to-3D generators.")


@app.callback()
def _main() -> None:
    """DSO: make image-to-3D generators produce objects that stand up under gravity."""


ConfigOption = typer.Option(None, "--config", "-c", help="YAML config (a path, or a name under configs/).")


@app.command()
def generate(
    images: list[Path] = typer.Argument(..., help="Prompt images (PNG/JPEG/WebP; RGBA keeps its alpha mask)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory."),
    adapter: Path | None = typer.Option(None, help="A PEFT adapter directory to apply."),
    seed: int = typer.Option(0, help="Seed of the first sample; sample j of image i uses seed + i*K + j."),
    samples: int = typer.Option(1, "--samples", "-k", min=1, help="Shapes per image (K)."),
    mesh_format: str = typer.Option("glb", "--format", help="Mesh format: glb, ply, obj or stl."),
    batch: int = typer.Option(4, min=1, help="Images per batch."),
    config: Path | None = ConfigOption,
) -> None:
    """Generate 3-D shapes from prompt images: a mesh and a .npy occupancy grid per sample.

    Exit status is 0 when every image was read and generated from, 1 when some could not be
    read (the others are still generated), 2 for bad arguments or when no image could be read.
    """
    from tqdm import tqdm

    from dso.config import load_settings
    from dso.models.generator import Generator
    from dso.models.image_io import InvalidImageError, load_image
    from dso.models.mesh import MESH_FORMATS, export_mesh

    if mesh_format not in MESH_FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(MESH_FORMATS)}")
    try:  # before the model loads: a bad output path is an argument error, not a traceback after minutes
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"cannot create output directory {out}: {exc.strerror or exc}", param_hint="'-o' / '--out'") from exc
    settings = load_settings(config or "tiny")
    gen = Generator.from_settings(settings)
    if adapter is not None:
        gen.use_adapter(adapter)
    loaded = []
    for path in images:
        try:
            loaded.append((path, load_image(path)))
        except (InvalidImageError, OSError) as exc:
            typer.secho(f"skipping {path}: {exc}", fg="red", err=True)
    if not loaded:
        typer.secho(f"error: none of the {len(images)} images could be read", fg="red", err=True)
        raise typer.Exit(code=2)
    records = []
    for start in tqdm(range(0, len(loaded), batch), desc="generating", unit="batch"):
        chunk = loaded[start : start + batch]
        shapes = gen.generate([im for _, im in chunk], samples_per_image=samples, seed=seed + start * samples)
        for shape in shapes:
            src = chunk[shape.image_index][0]
            stem = f"{src.stem}_s{shape.seed}"
            np.save(out / f"{stem}.npy", shape.occupancy)
            if shape.occupancy.any():
                export_mesh(shape.mesh, out / f"{stem}.{mesh_format}", y_up=mesh_format == "glb")  # glTF is y-up
            records.append({"image": str(src), "seed": shape.seed, "occupied_voxels": int(shape.occupancy.sum()), "stem": stem})
    (out / "samples.json").write_text(json.dumps(records, indent=2))
    typer.echo(f"wrote {len(records)} samples to {out}")
    if len(loaded) < len(images):
        typer.secho(f"error: {len(images) - len(loaded)} of {len(images)} images could not be read (see above)", fg="red", err=True)
        raise typer.Exit(code=1)


@app.command()
def pretrain(
    config: Path | None = ConfigOption,
    export_dir: Path | None = typer.Option(None, help="Where to write the trained model folder (default: dso/assets/tiny)."),
    output_dir: Path | None = typer.Option(None, help="Dataset cache and checkpoints (resumes from here)."),
) -> None:
    """Pretrain the embedded default generator on procedural objects (resumable)."""
    import time

    from dso.config import load_settings
    from dso.learner.pretrain import Pretrainer

    settings = load_settings(config or "tiny")
    if export_dir is not None:
        settings.pretrain.export_dir = export_dir
    if output_dir is not None:
        settings.pretrain.output_dir = output_dir
    start = time.time()
    target = Pretrainer(settings).run()
    typer.echo(f"exported {target} in {time.time() - start:.0f} s")


from dso.jobs.cli import run as _loop_run, worker_app as _worker_app  # noqa: E402  (the online loop)

app.command("run")(_loop_run)
app.add_typer(_worker_app, name="worker")


from dso.jobs.sim_cli import simulate_command  # noqa: E402  (light: MuJoCo loads when the command runs)

app.command("simulate")(simulate_command)


from dso.jobs.api_cli import api as _api_command  # noqa: E402  (light: FastAPI loads when the command runs)

app.command("api")(_api_command)


from dso.jobs import offline_cli as _offline  # noqa: E402  (offline dataset, training, evaluation, experiment)

app.add_typer(_offline.dataset_app, name="dataset")
app.command("train")(_offline.train)
app.command("eval")(_offline.evaluate)
app.command("experiment")(_offline.experiment)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
