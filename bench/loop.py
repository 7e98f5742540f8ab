"""Bench the online loop: held-out stability of the latest adapter over wall time, throughput, latency.

Runs ``dso run``'s loop (local Ray, embedded Valkey) in a background thread for
``--duration`` seconds while a periodic evaluator in this process loads the
latest published adapter, generates ``--samples`` shapes per held-out prompt
(fixed seeds), labels them with the oracle and compares each shape with the
prompt's ground-truth object (Chamfer distance after unit-cube normalisation
and ICP), so the base model (version 0) is the baseline of the same run.
Writes ``docs/loop_bench.json``, ``docs/loop_stability.png`` and the
"Online loop" section of docs/benchmarks.md.

    python bench/loop.py --duration 1800 --every 120
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dso.broker.adapter_store import AdapterStore
from dso.config import Settings
from dso.evaluate.geometry import compare_meshes
from dso.models.mesh import occupancy_to_mesh
from dso.jobs.session import run_loop, session_settings
from dso.models.generator import Generator
from dso.models.lora import attach_lora
from dso.shapes.prompts import heldout_prompts
from dso.sim.oracle import simulate

from benchdocs import write_section as write_section_in

DOCS = Path(__file__).resolve().parent.parent / "docs"
SECTION = "## Online loop"


class HeldoutEvaluator:
    """Stability rate and Chamfer-vs-base of an adapter on fixed held-out prompts and seeds."""

    def __init__(self, settings: Settings, prompts: int, samples: int):
        self.settings = settings
        self.samples = samples
        self.prompts = heldout_prompts(settings.shapes)[:prompts]
        self.images = [Image.fromarray(p.image, "RGBA") for p in self.prompts]
        self.truth = [occupancy_to_mesh(p.object.occupancy) for p in self.prompts]
        self.generator = Generator.from_settings(settings)
        self.base = self._score(self._generate())
        self.generator.flow = attach_lora(self.generator.modules.flow, settings.lora).eval()

    def _generate(self):
        return self.generator.generate(self.images, samples_per_image=self.samples, seed=0)

    def _score(self, shapes) -> dict[str, float]:
        verdicts = [simulate(s.occupancy, self.settings.sim) for s in shapes]
        chamfers = [compare_meshes(s.mesh, self.truth[s.image_index]).chamfer for s in shapes if s.occupancy.any()]
        return {
            "stability": float(np.mean([v.status == "ok" and v.stable for v in verdicts])),
            "chamfer": float(np.mean(chamfers)) if chamfers else float("nan"),
        }

    def evaluate(self, adapter_dir: Path | None) -> dict[str, float]:
        if adapter_dir is None:
            return dict(self.base)
        from dso.models.lora import live_lora_parameters, load_adapter_weights

        weights = load_adapter_weights(adapter_dir)
        with torch.no_grad():
            for key, param in live_lora_parameters(self.generator.flow).items():
                param.copy_(weights[key])
        return self._score(self._generate())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--every", type=float, default=120.0, help="seconds between held-out evaluations")
    parser.add_argument("--prompts", type=int, default=48, help="held-out prompts evaluated")
    parser.add_argument("--samples", type=int, default=2, help="shapes per held-out prompt")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = session_settings(args.config, args.duration, None, api=False)
    settings.shapes.heldout_objects = max(settings.shapes.heldout_objects, -(-args.prompts // settings.shapes.heldout_views))
    run_dir = Path("runs") / f"bench-loop-{int(time.time())}"  # a fresh run: never resume an old one
    settings.broker.run_dir = run_dir
    settings.loop.run_dir = None
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
    base = curve[0]
    best = max(curve, key=lambda c: c["stability"])
    last = curve[-1]
    report = {
        "duration_s": seconds,
        "base": base,
        "latest": last,
        "best": best,
        "curve": curve,
        "generated_per_s": summary.totals["generated"] / summary.seconds if summary else None,
        "labelled_per_s": summary.totals["labelled"] / summary.seconds if summary else None,
        "learner_steps_per_s": summary.learner.get("step", 0) / summary.seconds if summary else None,
        "versions": len(summary.versions_published) if summary else 0,
        "publish_to_adopt_s": summary.adoption_latency_s if summary else None,
        "learner": summary.learner if summary else None,
        "run_dir": str(run_dir),
        "objective": settings.objective.name,
        "lr": settings.train.lr,
        "max_steps_per_sample": settings.loop.max_steps_per_sample,
        "publish_every": settings.loop.publish_every,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loop_bench.json").write_text(json.dumps(report, indent=2, default=str))
    plot(curve, args.out / "loop_stability.png")
    write_section_in(args.out / "benchmarks.md", SECTION, section_body(args, report))
    print(json.dumps({k: v for k, v in report.items() if k != "curve"}, indent=2, default=str))


def plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [c["t"] / 60 for c in curve]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(t, [100 * c["stability"] for c in curve], marker="o")
    ax1.axhline(100 * curve[0]["stability"], color="grey", linestyle="--", label="base")
    ax1.set_xlabel("wall time (min)")
    ax1.set_ylabel("held-out stable (%)")
    ax1.legend()
    ax2.plot(t, [c["chamfer"] for c in curve], marker="o", color="tab:orange")
    ax2.axhline(curve[0]["chamfer"], color="grey", linestyle="--", label="base")
    ax2.axhline(1.05 * curve[0]["chamfer"], color="grey", linestyle=":", label="base + 5 %")
    ax2.set_xlabel("wall time (min)")
    ax2.set_ylabel("Chamfer to ground truth")
    ax2.legend()
    for ax in (ax1, ax2):
        for c in curve[1:]:
            ax.annotate(f"v{c['version']}", (c["t"] / 60, ax.get_ylim()[0]), fontsize=6, color="grey")
    fig.suptitle("Online loop on the embedded default: latest adapter on held-out prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def section_body(args, r: dict) -> str:
    base, last, best = r["base"], r["latest"], r["best"]
    lat = r["publish_to_adopt_s"] or {}
    fmt = lambda x, spec=".3f": "n/a" if x is None else format(x, spec)  # noqa: E731
    lines = [
        SECTION,
        "",
        f"`python bench/loop.py --duration {args.duration:.0f} --every {args.every:.0f} --prompts {args.prompts} "
        f"--samples {args.samples}` on this {os.cpu_count()}-core machine: the whole loop (local Ray, embedded Valkey, "
        "generators, simulators, DRO learner) runs while this process evaluates each newly published adapter on "
        f"{args.prompts} held-out prompts x {args.samples} fixed seeds (stability by the oracle; Chamfer distance to the "
        "ground-truth object after unit-cube normalisation and ICP). Version 0 is the base model in the same run. "
        f"Learner: objective {r['objective']}, lr {r['lr']:g}, replay ratio {r['max_steps_per_sample']} steps per sample, "
        f"a version every {r['publish_every']} steps (set with `DSO__OBJECTIVE__NAME`, `DSO__TRAIN__LR`, "
        "`DSO__LOOP__MAX_STEPS_PER_SAMPLE`, `DSO__LOOP__PUBLISH_EVERY`).",
        "",
        "| | adapter | held-out stable | Chamfer to GT | vs base |",
        "|---|---:|---:|---:|---:|",
        f"| base | v0 | {100 * base['stability']:.1f} % | {base['chamfer']:.4f} | 1.00 |",
        f"| latest | v{last['version']} | {100 * last['stability']:.1f} % | {last['chamfer']:.4f} | {last['chamfer'] / base['chamfer']:.2f} |",
        f"| best stability | v{best['version']} | {100 * best['stability']:.1f} % | {best['chamfer']:.4f} | {best['chamfer'] / base['chamfer']:.2f} |",
        "",
        "| throughput / latency | value |",
        "|---|---:|",
        f"| generated / s | {fmt(r['generated_per_s'], '.2f')} |",
        f"| labelled / s | {fmt(r['labelled_per_s'], '.2f')} |",
        f"| learner steps / s | {fmt(r['learner_steps_per_s'], '.2f')} |",
        f"| versions published | {r['versions']} |",
        f"| publish-to-adopt p50 / p95 (s) | {fmt(lat.get('p50'))} / {fmt(lat.get('p95'))} |",
        f"| wall time (s) | {r['duration_s']:.0f} |",
        "",
        "![loop stability](loop_stability.png)",
        "",
        "Raw numbers: `docs/loop_bench.json`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
