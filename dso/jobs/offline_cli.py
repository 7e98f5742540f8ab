"""CLI commands of the offline workflow: `dso dataset build`, `dso train`, `dso eval`, `dso experiment`.

Thin shells: parse options into settings, call the libraries, print progress and
tables. Heavy imports stay inside the functions so `dso --help` stays fast.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config (a path, or a name under configs/).")
OBJECTIVES = ("dro", "dpo", "sft", "dro_paired")

dataset_app = typer.Typer(no_args_is_help=True, help="Offline datasets of labelled samples.")


def _settings(config: Path | None):
    from dso.config import load_settings

    return load_settings(config or "tiny")


@dataset_app.command("build")
def dataset_build(
    out: Path | None = typer.Option(None, "-o", "--out", help="Dataset folder (default: dataset.output_dir). Resumes if it exists."),
    adapter: Path | None = typer.Option(None, help="Sample with this PEFT adapter (default: the base model)."),
    adapter_version: int = typer.Option(0, help="Version recorded with every sample."),
    objects: int | None = typer.Option(None, help="Training objects (default: dataset.objects)."),
    views: int | None = typer.Option(None, help="Prompt images per object (default: dataset.views_per_object)."),
    samples: int | None = typer.Option(None, "--samples", "-k", help="Samples per prompt image, K (default: dataset.samples_per_prompt)."),
    workers: int | None = typer.Option(None, help="Oracle processes (0: one per core)."),
    config: Path | None = ConfigOption,
) -> None:
    """Sample K shapes per training prompt, label them with the oracle, write shards + index.json (resumable)."""
    from tqdm import tqdm

    from dso.learner.dataset import OfflineDataset, build_dataset, plan_prompts
    from dso.models.generator import Generator

    settings = _settings(config)
    d = settings.dataset
    for name, value in (("objects", objects), ("views_per_object", views), ("samples_per_prompt", samples), ("sim_workers", workers)):
        if value is not None:
            setattr(d, name, value)
    root = out or d.output_dir
    gen = Generator.from_settings(settings)
    if adapter is not None:
        gen.use_adapter(adapter)
    total = -(-len(plan_prompts(d)) // d.chunk_prompts)
    with tqdm(total=total, desc="dataset", unit="chunk") as bar:

        def progress(done: int, _total: int, entry: dict) -> None:
            bar.n = done
            bar.set_postfix(stable=f"{entry['stable']}/{entry['samples']}")
            bar.refresh()

        build_dataset(gen, root, d, settings.shapes, settings.sim, adapter_version, f"{settings.model.source}:{adapter or 'base'}", on_chunk=progress)
    typer.echo(f"{root}: {OfflineDataset.load(root).summary()}")


def train(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Folder written by `dso dataset build`."),
    objective: str = typer.Option("dro", help=f"One of {', '.join(OBJECTIVES)}."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Run folder (default: train.output_dir/<objective>)."),
    steps: int | None = typer.Option(None, help="Total steps (default: train.steps)."),
    workers: int = typer.Option(1, help="Data-parallel workers; > 1 runs on Ray Train."),
    use_gpu: bool = typer.Option(False, "--gpu", help="One GPU per Ray Train worker."),
    resume: bool = typer.Option(True, help="Continue from the latest checkpoint in the run folder."),
    ray_address: str | None = typer.Option(None, help="Ray cluster address (default: start Ray locally)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch default; 1 is fastest on busy shared cores)."),
    config: Path | None = ConfigOption,
) -> None:
    """Fine-tune the LoRA adapter on an offline dataset with DRO, DPO or SFT (checkpoints + exact resume)."""
    if objective not in OBJECTIVES:
        raise typer.BadParameter(f"--objective must be one of {', '.join(OBJECTIVES)}")
    settings = _settings(config)
    settings.objective.name = objective
    if threads:
        import torch

        torch.set_num_threads(threads)
    if steps is not None:
        settings.train.steps = steps
    run_dir = out or settings.train.output_dir / objective
    if use_gpu and workers <= 1:
        settings.model.device = "cuda"
    if workers > 1:
        from dso.jobs.train_ray import train_with_ray

        result = train_with_ray(settings, dataset, run_dir, workers, use_gpu=use_gpu, resume=resume, address=ray_address)
        typer.echo(f"{objective}: {result.steps} steps on {workers} workers; metrics {result.metrics}")
        return
    from tqdm import tqdm

    from dso.learner.dataset import OfflineDataset
    from dso.learner.offline import latest_checkpoint, run_offline_training

    data = OfflineDataset.load(dataset)
    typer.echo(f"dataset: {data.summary()}")
    with tqdm(total=settings.train.steps, desc=objective, unit="step") as bar:

        def on_step(m: dict) -> None:
            bar.n = m["step"]
            bar.set_postfix(loss=f"{m['loss']:.4f}", gap=f"{m['err_unstable'] - m['err_stable']:+.4f}")
            bar.refresh()

        run_offline_training(settings, data, run_dir, resume=resume, on_step=on_step)
    typer.echo(f"latest checkpoint: {latest_checkpoint(run_dir)}")


def evaluate(
    adapter: Path | None = typer.Option(None, help="PEFT adapter folder (a checkpoint's adapter/); default: the base model."),
    out: Path = typer.Option(Path("runs/eval/eval.json"), "-o", "--out", help="JSON with the summary and every sample."),
    samples: int | None = typer.Option(None, "--samples", "-k", help="Samples per held-out prompt (default: eval.samples_per_prompt)."),
    config: Path | None = ConfigOption,
) -> None:
    """Held-out evaluation: % output, % stable, tilt, rotation, Chamfer, F-score@0.05 — JSON and a table."""
    from rich.console import Console

    from dso.jobs.experiment import generator_with_adapter
    from dso.evaluate.report import by_family, rich_table, summarize, write_json
    from dso.evaluate.stability import evaluate_generator
    from dso.shapes.prompts import heldout_prompts

    settings = _settings(config)
    if samples is not None:
        settings.eval.samples_per_prompt = samples
    results = evaluate_generator(generator_with_adapter(settings, adapter), heldout_prompts(settings.shapes), settings.sim, settings.eval)
    write_json(out, results, extra={"adapter": str(adapter) if adapter else None})
    name = str(adapter) if adapter else "base"
    console = Console()
    if not console.is_terminal:  # pipes and logs: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(rich_table({name: summarize(results)}))
    console.print(rich_table(by_family(results), title="By family"))
    typer.echo(f"wrote {out}")


def experiment(
    steps: int | None = typer.Option(None, help="Training steps per objective (default: experiment.steps)."),
    output_dir: Path | None = typer.Option(None, help="Run folder (default: experiment.output_dir); resumes."),
    docs_dir: Path | None = typer.Option(None, help="Where results.md and results_*.png go (default: docs)."),
    config: Path | None = ConfigOption,
) -> None:
    """Base vs SFT vs DPO vs DRO on the same data and step budget; regenerates docs/results.md and its plots."""
    import os
    import platform

    from dso.jobs.experiment import Experiment
    from dso.jobs.results_doc import write_all

    settings = _settings(config)
    if steps is not None:
        settings.experiment.steps = steps
    if output_dir is not None:
        settings.experiment.output_dir = output_dir
    if docs_dir is not None:
        settings.experiment.docs_dir = docs_dir
    if settings.experiment.torch_threads:
        import torch

        torch.set_num_threads(settings.experiment.torch_threads)
    exp = Experiment(settings, log=typer.echo)
    result = exp.run()
    prompts, grids = exp.sample_grids(list(settings.experiment.objectives))
    command = "dso " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    device = f"{platform.machine()} CPU x{os.cpu_count()}" if settings.model.device in ("cpu", "auto") else settings.model.device
    target = write_all(result, settings, prompts, grids, command, device)
    typer.echo(f"wrote {target}")
