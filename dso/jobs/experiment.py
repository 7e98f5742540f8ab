"""The experiment of the paper's Tables 1-2 on the embedded default: base vs SFT vs DPO vs DRO.

One labelled dataset (the base model's own samples on training prompts), one
step budget, every objective trained from the same base; each checkpoint is
evaluated on the held-out prompts with the same sampling seeds. Every stage
resumes: the dataset by chunk, training by checkpoint, evaluations by their
cached JSON, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dso.config import Settings
from dso.evaluate.report import EvalSummary, summarize, write_json
from dso.evaluate.stability import HeldoutSamples, SampleEval, evaluate_generator, generate_heldout
from dso.learner.dataset import OfflineDataset, build_dataset
from dso.learner.offline import CHECKPOINTS_DIR, METRICS_FILE, run_offline_training
from dso.learner.trainer import ADAPTER_DIR
from dso.models.generator import Generator
from dso.shapes.prompts import Prompt, heldout_prompts

BASE = "base"


@dataclass
class ExperimentResult:
    base: EvalSummary
    curves: dict[str, list[tuple[int, EvalSummary]]]  # objective -> (step, summary), step 0 = base
    dataset: dict
    train_seconds: dict[str, float] = field(default_factory=dict)
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def final(self) -> dict[str, EvalSummary]:
        return {BASE: self.base, **{name: curve[-1][1] for name, curve in self.curves.items()}}


def _summary_from_json(path: Path) -> EvalSummary:
    raw = json.loads(path.read_text())["summary"]
    return EvalSummary(**{k: (float("nan") if v is None else v) for k, v in raw.items()})


def generator_with_adapter(settings: Settings, adapter: Path | None) -> Generator:
    """A fresh generator per adapter (PEFT injects layers in place, so adapters are never stacked)."""
    gen = Generator.from_settings(settings)
    if adapter is not None:
        gen.use_adapter(adapter)
    return gen


class Experiment:
    def __init__(self, settings: Settings, log: Callable[[str], None] = print):
        self.settings = settings
        self.out = Path(settings.experiment.output_dir)
        self.log = log
        self.prompts: list[Prompt] = heldout_prompts(settings.shapes)

    def evaluate(self, name: str, adapter: Path | None) -> EvalSummary:
        """Evaluate one model on the held-out prompts; cached in out/eval/<name>.json."""
        path = self.out / "eval" / f"{name}.json"
        if path.is_file():
            return _summary_from_json(path)
        start = time.time()
        results: list[SampleEval] = evaluate_generator(generator_with_adapter(self.settings, adapter), self.prompts, self.settings.sim, self.settings.eval)
        write_json(path, results, extra={"adapter": str(adapter) if adapter else None, "seconds": time.time() - start})
        s = summarize(results)
        self.log(f"eval {name}: {s.pct_stable:.1f} % stable, Chamfer {s.chamfer:.4f} ({time.time() - start:.0f} s)")
        return s

    def build_dataset(self) -> OfflineDataset:
        root = self.out / "dataset"
        start = time.time()
        gen = generator_with_adapter(self.settings, None)
        build_dataset(
            gen, root, self.settings.dataset, self.settings.shapes, self.settings.sim, model_id=_model_id(self.settings),
            on_chunk=lambda done, total, entry: self.log(f"dataset chunk {done}/{total}: {entry['stable']}/{entry['samples']} stable"),
        )
        ds = OfflineDataset.load(root)
        self.log(f"dataset: {ds.summary()} ({time.time() - start:.0f} s)")
        return ds

    def train(self, objective: str, dataset: OfflineDataset) -> float:
        s = self.settings.model_copy(deep=True)
        s.objective.name = objective
        s.train.steps = self.settings.experiment.steps
        s.train.checkpoint_every = self.settings.experiment.eval_every
        start = time.time()
        run_offline_training(s, dataset, self.out / objective, steps=s.train.steps)
        seconds = time.time() - start
        self.log(f"trained {objective}: {s.train.steps} steps ({seconds:.0f} s this session)")
        return seconds

    def eval_steps(self) -> list[int]:
        e = self.settings.experiment
        steps = list(range(e.eval_every, e.steps + 1, e.eval_every))
        return steps if steps and steps[-1] == e.steps else [*steps, e.steps]

    def run(self) -> ExperimentResult:
        start = time.time()
        dataset = self.build_dataset()
        base = self.evaluate(BASE, None)
        curves, seconds, losses = {}, {}, {}
        for objective in self.settings.experiment.objectives:
            seconds[objective] = self.train(objective, dataset)
            curve = [(0, base)]
            for step in self.eval_steps():
                adapter = self.out / objective / CHECKPOINTS_DIR / f"step_{step:06d}" / ADAPTER_DIR
                curve.append((step, self.evaluate(f"{objective}_step{step:06d}", adapter)))
            curves[objective] = curve
            losses[objective] = _losses(self.out / objective / METRICS_FILE)
        return ExperimentResult(base, curves, dataset.summary(), seconds, losses, time.time() - start)

    def sample_grids(self, objectives: list[str]) -> tuple[list[Prompt], dict[str, HeldoutSamples]]:
        """First-seed samples on the first few held-out prompts, for the before / after picture."""
        prompts = self.prompts[: self.settings.experiment.sample_prompts]
        models = {BASE: None}
        for objective in objectives:
            models[objective] = self.out / objective / CHECKPOINTS_DIR / f"step_{self.settings.experiment.steps:06d}" / ADAPTER_DIR
        return prompts, {name: generate_heldout(generator_with_adapter(self.settings, a), prompts, self.settings.eval) for name, a in models.items()}


def _losses(path: Path) -> list[tuple[int, float]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [(int(r["step"]), float(r["loss"])) for r in rows]


def _model_id(settings: Settings) -> str:
    m = settings.model
    return f"{m.source}:{m.weights_path or m.trellis_path or 'shipped'}"
