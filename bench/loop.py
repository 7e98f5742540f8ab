"""Bench the online loop: held-out stability of the latest adapter over wall time, throughput, latency.

Runs ``dso run``'s loop (local Ray, embedded Valkey) in a background thread for
``--duration`` seconds while a periodic evaluator in this process loads the
latest published adapter, generates ``--samples`` shapes per held-out prompt
(fixed seeds), labels them with the oracle and compares each shape with the
base model's shape from the same seed (Chamfer distance). Writes
``docs/loop_bench.json`` and ``docs/loop_stability.png``.

    python bench/loop.py --duration 1800 --every 120
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dso.broker.adapter_store import AdapterStore
from dso.config import Settings
from dso.evaluate.geometry import compare_meshes
from dso.jobs.session import run_loop, session_settings
from dso.models.generator import Generator
from dso.models.lora import attach_lora
from dso.shapes.prompts import heldout_prompts
from dso.sim.oracle import simulate

DOCS = Path(__file__).resolve().parent.parent / "docs"


class HeldoutEvaluator:
    """Stability rate and Chamfer-vs-base of an adapter on fixed held-out prompts and seeds."""

    def __init__(self, settings: Settings, prompts: int, samples: int):
        self.settings = settings
        self.samples = samples
        self.images = [Image.fromarray(p.image, "RGBA") for p in heldout_prompts(settings.shapes)[:prompts]]
        self.generator = Generator.from_settings(settings)
        self.base = self._generate()
        self.base_stable = self._stability(self.base)
        self.generator.flow = attach_lora(self.generator.modules.flow, settings.lora).eval()

    def _generate(self):
        return self.generator.generate(self.images, samples_per_image=self.samples, seed=0)

    def _stability(self, shapes) -> float:
        verdicts = [simulate(s.occupancy, self.settings.sim) for s in shapes]
        return float(np.mean([v.stable for v in verdicts]))

    def evaluate(self, adapter_dir: Path | None) -> dict[str, float]:
        if adapter_dir is None:
            return {"stability": self.base_stable, "chamfer_to_base": 0.0}
        from dso.models.lora import load_adapter_weights, live_lora_parameters

        weights = load_adapter_weights(adapter_dir)
        with torch.no_grad():
            for key, param in live_lora_parameters(self.generator.flow).items():
                param.copy_(weights[key])
        shapes = self._generate()
        chamfers = [
            compare_meshes(s.mesh, b.mesh).chamfer
            for s, b in zip(shapes, self.base)
            if s.occupancy.any() and b.occupancy.any()
        ]
        return {"stability": self._stability(shapes), "chamfer_to_base": float(np.mean(chamfers)) if chamfers else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--every", type=float, default=120.0, help="seconds between held-out evaluations")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts evaluated")
    parser.add_argument("--samples", type=int, default=2, help="shapes per held-out prompt")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = session_settings(args.config, args.duration, None)
    run_dir = Path(settings.broker.run_dir)
    evaluator = HeldoutEvaluator(settings, args.prompts, args.samples)
    result: dict = {}
    loop = threading.Thread(target=lambda: result.setdefault("summary", run_loop(settings)))
    started = time.time()
    loop.start()
    store = AdapterStore(settings.broker.resolved_adapter_store_dir)
    curve = [{"t": 0.0, "version": 0, **evaluator.evaluate(None)}]
    while loop.is_alive():
        loop.join(timeout=args.every)
        latest = store.latest_path()
        if latest is not None and latest[0] != curve[-1]["version"]:
            curve.append({"t": time.time() - started, "version": latest[0], **evaluator.evaluate(latest[1])})
            print(curve[-1], flush=True)
    summary = result.get("summary")
    seconds = time.time() - started
    report = {
        "duration_s": seconds,
        "base_stability": evaluator.base_stable,
        "curve": curve,
        "generated_per_s": summary.totals["generated"] / summary.seconds if summary else None,
        "labelled_per_s": summary.totals["labelled"] / summary.seconds if summary else None,
        "learner_steps_per_s": summary.learner.get("step", 0) / summary.seconds if summary else None,
        "versions": len(summary.versions_published) if summary else 0,
        "publish_to_adopt_s": summary.adoption_latency_s if summary else None,
        "run_dir": str(run_dir),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loop_bench.json").write_text(json.dumps(report, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["t"] / 60 for c in curve], [100 * c["stability"] for c in curve], marker="o")
    ax.axhline(100 * evaluator.base_stable, color="grey", linestyle="--", label="base")
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("held-out stable (%)")
    ax.set_title("latest adapter, held-out prompts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "loop_stability.png", dpi=120)
    print(json.dumps({k: v for k, v in report.items() if k != "curve"}, indent=2))


if __name__ == "__main__":
    main()
