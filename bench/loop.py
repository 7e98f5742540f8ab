"""Bench the online loop: held-out stability and fidelity of its adapters over wall time, throughput, latency.

Two steps, so that evaluation never shares the cores with the loop it measures:

    python bench/loop.py run --label dro --duration 3600 --every 300          # the loop, then its checkpoints
    python bench/loop.py run --label dpo --duration 900 --set objective.name=dpo
    python bench/loop.py report --labels dro dpo                               # docs/benchmarks.md + plots

``run`` runs ``dso run``'s loop (local Ray, embedded Valkey, the canary and its gate) in a fresh run
directory for ``--duration`` seconds, then evaluates the adapters that were *candidates* (the newest
publish) and the ones that were *promoted* at each ``--every`` mark on ``--prompts`` held-out prompts x
``--samples`` fixed seeds (oracle verdict; Chamfer / F-score to the prompt's ground-truth object after
unit-cube normalisation and ICP; base footprint), with the base model (version 0) as the baseline of the
same run. ``--set section.field=value`` overrides a setting (as ``DSO__SECTION__FIELD``).
Results: ``runs/bench-loop/<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from dso.broker.adapter_store import AdapterStore
from dso.config import EvalSettings, Settings
from dso.evaluate.stability import evaluate_generator
from dso.jobs.session import run_loop, session_settings
from dso.models.generator import Generator
from dso.models.lora import attach_lora, live_lora_parameters, load_adapter_weights
from dso.shapes.prompts import heldout_prompts

from benchdocs import write_section as write_section_in

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "runs" / "bench-loop"
SECTION = "## Online loop"


def apply_overrides(pairs: list[str]) -> dict[str, str]:
    """``section.field=value`` -> ``DSO__SECTION__FIELD`` in this process's environment."""
    applied = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not value or "." not in key:
            raise SystemExit(f"--set wants section.field=value, got {pair!r}")
        os.environ["DSO__" + "__".join(p.upper() for p in key.split("."))] = value
        applied[key] = value
    return applied


class Checkpoints:
    """Held-out evaluation of adapter versions on fixed prompts and seeds (the base model included)."""

    def __init__(self, settings: Settings, prompts: int, samples: int):
        self.settings = settings
        skip = settings.canary.prompts  # the canary's probe prompts come first: evaluate on the ones after them
        shapes = settings.shapes.model_copy(
            update={"heldout_objects": max(settings.shapes.heldout_objects, -(-(skip + prompts) // settings.shapes.heldout_views))}
        )
        self.prompts = heldout_prompts(shapes)[skip : skip + prompts]
        self.eval = EvalSettings(samples_per_prompt=samples)
        self.generator = Generator.from_settings(settings)
        self.generator.flow = attach_lora(self.generator.modules.flow, settings.lora).eval()
        self.live = live_lora_parameters(self.generator.flow)
        self.zero = {k: torch.zeros_like(p) if "lora_B" in k else p.detach().clone() for k, p in self.live.items()}
        self.cache: dict[int, dict[str, float]] = {}

    def evaluate(self, version: int, store: AdapterStore) -> dict[str, float]:
        if version not in self.cache:
            weights = self.zero if version == 0 else load_adapter_weights(store.path(version))
            with torch.no_grad():
                for key, param in self.live.items():
                    param.copy_(weights[key])
            rows = evaluate_generator(self.generator, self.prompts, self.settings.sim, self.eval)
            finite = lambda xs: [x for x in xs if math.isfinite(x)]  # noqa: E731
            self.cache[version] = {
                "stability": float(np.mean([r.stable for r in rows])),
                "chamfer": float(np.mean(finite([r.chamfer for r in rows]))),
                "fscore": float(100 * np.mean(finite([r.fscore for r in rows]))),
                "footprint": float(np.mean(finite([r.base_area_ratio for r in rows]))),
                "samples": len(rows),
            }
        return self.cache[version]


def created_times(store: AdapterStore) -> dict[int, float]:
    return {v: datetime.fromisoformat(store.manifest(v).created_at).timestamp() for v in store.versions()}


def promoted_times(run_dir: Path, settings: Settings) -> list[tuple[float, int]]:
    """(decided_at, version) of every promotion, read back from the run's broker."""
    from dso.broker.broker import Broker

    broker_settings = settings.broker.model_copy(update={"run_dir": run_dir, "redis_url": None})
    with Broker.open(broker_settings) as broker:
        records = broker.promotion.all()
        canary = {v: r.model_dump(mode="json") for v, r in records.items()}
        adopted = sorted({e.version for e in broker.adoptions.events()})
    promoted = sorted((r["decided_at"], v) for v, r in canary.items() if r["decision"] == "promoted")
    return promoted, canary, adopted


def run(args: argparse.Namespace) -> None:
    overrides = apply_overrides(args.set or [])
    torch.set_num_threads(1)
    settings = session_settings(args.config, args.duration, None, api=False)
    run_dir = ROOT / "runs" / f"bench-loop-{args.label}-{int(time.time())}"  # a fresh run: never resume an old one
    settings.broker.run_dir = run_dir
    settings.loop.run_dir = None
    started = time.time()
    summary = run_loop(settings)
    wall = time.time() - started
    store = AdapterStore.from_settings(settings.broker)
    created = created_times(store)
    promoted, canary, adopted = promoted_times(run_dir, settings)
    torch.set_num_threads(os.cpu_count() or 1)
    points = Checkpoints(settings, args.prompts, args.samples)
    marks = [0.0] + [m for m in np.arange(args.every, wall + 1e-6, args.every)]
    curve = []
    for mark in marks:
        at = started + mark
        candidate = max([v for v, t in created.items() if t <= at], default=0)
        current = max([v for t, v in promoted if t <= at], default=0)
        row = {"t": mark, "candidate": candidate, "promoted": current}
        row["promoted_eval"] = points.evaluate(current, store)
        if len(curve) % args.candidate_marks == 0 or candidate in points.cache:
            row["candidate_eval"] = points.evaluate(candidate, store)
        curve.append(row)
        print(json.dumps(row), flush=True)
    s = summary
    report = {
        "label": args.label,
        "overrides": overrides,
        "objective": settings.objective.model_dump(mode="json"),
        "lr": settings.train.lr,
        "max_steps_per_sample": settings.loop.max_steps_per_sample,
        "publish_every": settings.loop.publish_every,
        "canary": settings.canary.enabled,
        "duration_s": wall,
        "eval": {"prompts": args.prompts, "samples_per_prompt": args.samples, "first_prompt": settings.canary.prompts},
        "curve": curve,
        "canary_records": canary,
        "adopted_versions": adopted,  # every version a generator hot-swapped to
        "generated_per_s": s.totals["generated"] / s.seconds if s else None,
        "labelled_per_s": s.totals["labelled"] / s.seconds if s else None,
        "learner_steps": s.learner.get("step", 0) if s else None,
        "learner": s.learner if s else None,
        "versions": len(s.versions_published) if s else 0,
        "publish_to_adopt_s": s.adoption_latency_s if s else None,
        "run_dir": str(run_dir),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.label}.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {RESULTS / f'{args.label}.json'}")


def first_time_reaching(curve: list[dict], key: str, level: float) -> float | None:
    return next((c["t"] for c in curve if c[key]["stability"] >= level), None)


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in reports:
        c = r["curve"]
        t = [p["t"] / 60 for p in c]
        base = c[0]["promoted_eval"]
        cand = [p for p in c if "candidate_eval" in p]
        if r.get("canary", True):  # promoted solid, newest publish dotted
            line = ax1.plot(t, [100 * p["promoted_eval"]["stability"] for p in c], marker="o", label=f"{r['label']} (promoted)")[0]
            ax2.plot(t, [p["promoted_eval"]["chamfer"] / base["chamfer"] for p in c], marker="o", color=line.get_color())
            style, name = ":", f"{r['label']} (newest)"
        else:  # no canary: every publish is served, one curve
            line, style, name = None, "-", f"{r['label']} (no canary)"
        color = None if line is None else line.get_color()
        line2 = ax1.plot([p["t"] / 60 for p in cand], [100 * p["candidate_eval"]["stability"] for p in cand],
                         linestyle=style, marker=None if line else "s", color=color, label=name)[0]
        ax2.plot([p["t"] / 60 for p in cand], [p["candidate_eval"]["chamfer"] / base["chamfer"] for p in cand],
                 linestyle=style, marker=None if line else "s", color=line2.get_color())
    ax1.axhline(97, color="grey", linestyle="--", linewidth=0.8)
    ax1.set_xlabel("wall time (min)")
    ax1.set_ylabel("held-out stable (%)")
    ax1.legend(fontsize=7)
    ax2.axhline(1.05, color="grey", linestyle="--", linewidth=0.8, label="base + 5 %")
    ax2.axhline(1.0, color="grey", linewidth=0.5)
    ax2.set_xlabel("wall time (min)")
    ax2.set_ylabel("Chamfer to ground truth / base")
    ax2.legend(fontsize=7)
    fig.suptitle("Online loop, embedded default: promoted (solid) and newest published (dotted) adapters, held-out")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trend(curve: list[dict], since_s: float) -> float | None:
    """Least-squares slope of the promoted version's Chamfer ratio per 10 minutes over the marks after ``since_s``."""
    base = curve[0]["promoted_eval"]["chamfer"]
    pts = [(c["t"], c["promoted_eval"]["chamfer"] / base) for c in curve if c["t"] >= since_s]
    if len(pts) < 3:
        return None
    t, y = np.array(pts).T
    return float(np.polyfit(t / 600.0, y, 1)[0])


def _adopted_ok(r: dict) -> str:
    """Whether every version a generator adopted was promoted (the gate's promise), with the counts."""
    adopted = r.get("adopted_versions")
    if adopted is None:
        return "n/a"
    promoted = {int(v) for v, rec in r["canary_records"].items() if rec["decision"] == "promoted"}
    bad = [v for v in adopted if v not in promoted]
    return f"yes ({len(adopted)} adopted)" if not bad else f"NO: {bad}"


def report(args: argparse.Namespace) -> None:
    reports = [json.loads((RESULTS / f"{label}.json").read_text()) for label in args.labels]
    plot(reports, args.out / "loop_stability.png")
    lines = [
        SECTION,
        "",
        f"`python bench/loop.py run --label L --duration D --every E [--set ...]`, then `python bench/loop.py report "
        f"--labels {' '.join(args.labels)}`, on this {os.cpu_count()}-core machine. Each run is the whole loop "
        "(local Ray, embedded Valkey, generator, simulator, learner, canary + gate) in a fresh run directory; after "
        "it stops, the adapter that was newest-published and the one that was promoted at each mark are evaluated "
        "on held-out prompts x fixed seeds (oracle verdict; Chamfer / F-score@0.05 to the ground-truth object after "
        "unit-cube normalisation and ICP; base footprint vs the truth's), version 0 (the base model) being the "
        "baseline of the same run. The evaluated prompts come after the canary's probe prompts in the held-out set "
        "(disjoint from what the gate saw). Evaluation runs after the loop, so it does not slow the loop it measures.",
        "",
        "| run | settings | eval samples | base stable | first >= 97 % (promoted) | final promoted | stable | Chamfer / base "
        "| worst promoted Chamfer / base | slope, last 30 min (/10 min) | versions | refused | rollbacks | canary CPU share | generators adopted only promoted versions | gen / s | publish-to-adopt p95 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        c = r["curve"]
        base = c[0]["promoted_eval"]
        last = c[-1]
        reach = first_time_reaching(c, "promoted_eval", 0.97)
        worst = max(p["promoted_eval"]["chamfer"] / base["chamfer"] for p in c)
        slope = trend(c, max(0.0, r["duration_s"] - 1800))
        refused = sum(1 for rec in r["canary_records"].values() if rec["decision"] == "refused")
        # the canary scores with one thread: its busy seconds over all cores' seconds is its CPU share of the loop
        busy = sum(rec["seconds"] for rec in r["canary_records"].values())
        share = f"{100 * busy / (r['duration_s'] * (os.cpu_count() or 1)):.1f} %" if r.get("canary", True) else "n/a"
        rollbacks = int((r.get("learner") or {}).get("rollbacks", 0) or 0)
        lat = (r.get("publish_to_adopt_s") or {}).get("p95")
        samples = r["eval"]["prompts"] * r["eval"]["samples_per_prompt"]
        settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "defaults"
        lines.append(
            f"| {r['label']} | {settings} | {samples} | {100 * base['stability']:.1f} % | "
            + (f"{reach / 60:.1f} min" if reach is not None else "not reached")
            + f" | v{last['promoted']} | {100 * last['promoted_eval']['stability']:.1f} % | "
            f"{last['promoted_eval']['chamfer'] / base['chamfer']:.3f} | {worst:.3f} | "
            + ("n/a" if slope is None else f"{slope:+.3f}")
            + f" | {r['versions']} | {refused} | {rollbacks} | {share} | {_adopted_ok(r)} | {r['generated_per_s']:.1f} | "
            + ("n/a" if lat is None else f"{lat:.2f} s")
            + " |"
        )
    lines += ["", "![loop stability](loop_stability.png)", "", "Per-mark figures: `docs/loop_bench.json`.", ""]
    (args.out / "loop_bench.json").write_text(json.dumps(reports, indent=2, default=str))
    write_section_in(args.out / "benchmarks.md", SECTION, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the loop, then evaluate its checkpoints")
    r.add_argument("--label", required=True)
    r.add_argument("--config", default="tiny")
    r.add_argument("--duration", type=float, default=600.0)
    r.add_argument("--every", type=float, default=120.0, help="seconds between evaluated marks")
    r.add_argument("--prompts", type=int, default=64, help="held-out prompts evaluated")
    r.add_argument("--samples", type=int, default=4, help="shapes per held-out prompt")
    r.add_argument("--candidate-marks", type=int, default=1, help="evaluate the newest publish at every Nth mark (the promoted one at every mark)")
    r.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p = sub.add_parser("report", help="write docs/benchmarks.md's section and the plot from runs")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--out", type=Path, default=DOCS)
    c = sub.add_parser("plot", help="plot runs' curves into one picture (e.g. the objectives tried, for docs/results.md)")
    c.add_argument("--labels", nargs="+", required=True)
    c.add_argument("--path", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    elif args.command == "report":
        report(args)
    else:
        plot([json.loads((RESULTS / f"{label}.json").read_text()) for label in args.labels], args.path)


if __name__ == "__main__":
    main()
