"""docs/results.md and its figures, written from an ExperimentResult.

Hand-written notes survive regeneration: whatever sits between the NOTES_BEGIN
and NOTES_END markers of the existing file is carried over verbatim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dso.config import Settings
from dso.jobs.experiment import ExperimentResult
from dso.evaluate.report import EvalSummary, markdown_table
from dso.evaluate.stability import HeldoutSamples
from dso.shapes.prompts import Prompt
from dso.shapes.render import render_occupancy
from dso.sim.oracle import simulate

NOTES_BEGIN = "<!-- notes: kept when the file is regenerated -->"
NOTES_END = "<!-- /notes -->"
CURVES_PNG = "results_curves.png"
SAMPLES_PNG = "results_samples.png"
LOSSES_PNG = "results_losses.png"
COLORS = {"base": "#666666", "sft": "#2a9d8f", "dpo": "#e76f51", "dro": "#264653", "dro_paired": "#8e44ad"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(result: ExperimentResult, path: Path) -> None:
    """% stable, Chamfer distance and base-area ratio against training steps, one line per objective."""
    plt = _pyplot()
    panels = (("pct_stable", "% stable (held-out)"), ("chamfer", "Chamfer distance"), ("base_area_ratio", "base area / truth's"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        for name, curve in result.curves.items():
            steps = [s for s, _ in curve]
            ax.plot(steps, [getattr(v, key) for _, v in curve], marker="o", label=name.upper(), color=COLORS.get(name))
        ax.axhline(getattr(result.base, key), color=COLORS["base"], linestyle="--", linewidth=1, label="base")
        ax.set_xlabel("training step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(result: ExperimentResult, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(result.losses), figsize=(3.6 * len(result.losses), 3.0), squeeze=False)
    for ax, (name, rows) in zip(axes[0], result.losses.items()):
        if rows:
            steps, losses = zip(*rows)
            ax.plot(steps, losses, color=COLORS.get(name), linewidth=0.8)
        ax.set_title(f"{name.upper()} loss")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(prompts: Sequence[Prompt], grids: dict[str, HeldoutSamples], settings: Settings, path: Path) -> None:
    """Rows: held-out prompts; columns: the prompt image, then each model's first sample, with the oracle's verdict."""
    plt = _pyplot()
    k = settings.eval.samples_per_prompt
    names = list(grids)
    fig, axes = plt.subplots(len(prompts), len(names) + 1, figsize=(2.0 * (len(names) + 1), 2.1 * len(prompts)), squeeze=False)
    for row, prompt in enumerate(prompts):
        axes[row][0].imshow(prompt.image)
        axes[row][0].set_title("prompt" if row == 0 else "", fontsize=9)
        for col, name in enumerate(names, start=1):
            occ = grids[name].occupancy[row * k]
            ax = axes[row][col]
            if occ.any():
                verdict = simulate(occ, settings.sim)
                ax.imshow(render_occupancy(occ, prompt.camera, size=settings.shapes.render_size, settings=settings.shapes))
                tag = f"{'stable' if verdict.stable else 'FALLS'} {verdict.tilt_deg or 0:.0f}°"
                color = "#1b7f3b" if verdict.stable else "#c0392b"
            else:
                tag, color = "no output", "#c0392b"
            ax.set_title(f"{name.upper() if row == 0 else ''}\n{tag}", fontsize=8, color=color)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _dro_push(s: Settings) -> str:
    o = s.objective
    tether = f", velocity tether {o.tether:g}" if o.tether > 0 else ""
    ema = f", EMA {o.ema_decay:g}" if o.ema_decay is not None else ""
    return f"DRO push anchored to the reference (stops {100 * o.dro_margin:g} % above its error){tether}{ema}"


def _guidance(s: Settings) -> str:
    if not s.objective.guided or s.sampler.cfg_strength == 0:
        return "errors of the conditional velocity"
    return f"errors of the guided velocity the sampler follows (CFG {s.sampler.cfg_strength:g}, both branches trained)"


def _family_mix(shapes) -> str:
    """How the held-out objects' families were chosen, for the set-up paragraph."""
    if shapes.prompt_family_weights:
        mix = ", ".join(f"{k} {v:g}" for k, v in shapes.prompt_family_weights.items())
        return f"(families drawn with weights {mix}: shapes.prompt_family_weights) "
    return "(balanced over the object families) " if shapes.heldout_balanced else ""


def _fmt(x: float, spec: str = ".1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def first_step_reaching(curve: list[tuple[int, EvalSummary]], level: float) -> int | None:
    return next((step for step, s in curve if s.pct_stable >= level), None)


def findings(result: ExperimentResult) -> list[str]:
    """The issue's questions answered from the numbers (no hand-tuned wording per run)."""
    base = result.base
    final = result.final
    lines = []
    if "dro" in final:
        dro = final["dro"]
        gain = dro.pct_stable - base.pct_stable
        stable_ok = gain >= 10.0 or dro.pct_stable >= 97.0
        chamfer_ratio = dro.chamfer / base.chamfer if base.chamfer else math.nan
        lines.append(
            f"- **Target (DRO +10 points of % stable, or >= 97 %)**: {'met' if stable_ok else 'NOT met'} — "
            f"{_fmt(base.pct_stable)} % -> {_fmt(dro.pct_stable)} % ({gain:+.1f} points)."
        )
        lines.append(
            f"- **Geometry (DRO Chamfer <= 1.05 x base)**: {'met' if chamfer_ratio <= 1.05 else 'NOT met'} — "
            f"{_fmt(base.chamfer, '.4f')} -> {_fmt(dro.chamfer, '.4f')} ({chamfer_ratio:.3f} x base)."
        )
    for name in ("dpo", "sft", "dro_paired"):
        if name in final:
            s = final[name]
            lines.append(
                f"- **{name.upper()}**: {_fmt(s.pct_stable)} % stable ({s.pct_stable - base.pct_stable:+.1f} points), "
                f"Chamfer {_fmt(s.chamfer, '.4f')} ({s.chamfer / base.chamfer:.3f} x base)."
            )
    if "dro" in result.curves and "dpo" in result.curves:
        top = min(final["dro"].pct_stable, final["dpo"].pct_stable)
        level = base.pct_stable + 0.9 * (top - base.pct_stable)
        a, b = first_step_reaching(result.curves["dro"], level), first_step_reaching(result.curves["dpo"], level)
        if top <= base.pct_stable:
            verdict = "not measurable (one of them does not improve on the base)"
        elif a is not None and (b is None or a < b):
            verdict = "yes, DRO gets there first"
        elif a == b:
            verdict = "a tie at this evaluation spacing"
        else:
            verdict = "no, DPO gets there first"
        lines.append(
            f"- **Does DRO converge faster than DPO?** {verdict}: first evaluated step with >= {level:.1f} % stable "
            f"(90 % of the smaller final gain): DRO {a if a is not None else 'never'}, DPO {b if b is not None else 'never'}; "
            f"at the first evaluated step ({result.curves['dro'][1][0]}): DRO {_fmt(result.curves['dro'][1][1].pct_stable)} %, "
            f"DPO {_fmt(result.curves['dpo'][1][1].pct_stable)} %."
        )
    cheats = []
    for name, curve in result.curves.items():
        ratio = curve[-1][1].base_area_ratio / base.base_area_ratio if base.base_area_ratio else math.nan
        peak = max(s.base_area_ratio for _, s in curve[1:]) / base.base_area_ratio if base.base_area_ratio else math.nan
        cheats.append(f"{name.upper()} {ratio:.2f}x (peak {peak:.2f}x)")
    lines.append(
        "- **Flat base plates (\"cheating\")**: footprint of the lowest two voxel layers relative to the ground truth's, "
        "final vs base: " + ", ".join(cheats) + ". A rise well above 1.0x would mean the model widens its bases."
    )
    return lines


def _curve_table(result: ExperimentResult) -> str:
    names = list(result.curves)
    steps = sorted({s for c in result.curves.values() for s, _ in c})
    head = "| step | " + " | ".join(f"{n.upper()} % stable | {n.upper()} Chamfer" for n in names) + " |"
    rule = "|---|" + "---|---|" * len(names)
    rows = []
    for step in steps:
        cells = []
        for n in names:
            hit = dict(result.curves[n]).get(step)
            cells += [_fmt(hit.pct_stable), _fmt(hit.chamfer, ".4f")] if hit else ["", ""]
        rows.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def _existing_notes(path: Path) -> str:
    if not path.is_file():
        return "_(none yet)_"
    text = path.read_text()
    if NOTES_BEGIN in text and NOTES_END in text:
        return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0].strip()
    return "_(none yet)_"


def write_results(result: ExperimentResult, settings: Settings, command: str, path: Path, device: str) -> None:
    s, e, d = settings, settings.experiment, settings.dataset
    ds = result.dataset
    doc = [
        "# Results: base vs SFT vs DPO vs DRO on the embedded default",
        "",
        f"Regenerate with `{command}` on {device} (this invocation: {result.wall_seconds / 60:.1f} min). "
        "Every stage resumes and caches its output under experiment.output_dir, so re-running a finished "
        "experiment only redraws the figures and rewrites this page.",
        "",
        "## Set-up",
        "",
        f"- Generator: the embedded tiny TRELLIS-architecture model (`{s.model.weights_path or 'dso/assets/tiny'}`), "
        f"{s.sampler.steps} Euler steps, CFG {s.sampler.cfg_strength}.",
        f"- Labelled data (shared by every objective): the base model's own samples on {ds['prompts']} training prompts "
        f"({d.objects} objects x {d.views_per_object} views, object seeds from {d.object_seed_start}, disjoint from the held-out seeds), "
        f"K = {d.samples_per_prompt} samples each: {ds['samples']} samples, {ds['stable']} stable "
        f"({100 * ds['stable_fraction']:.1f} %), {ds['pair_prompts']} prompts with a (stable, unstable) pair.",
        f"- Training: LoRA r={s.lora.r} alpha={s.lora.alpha}, AdamW lr {s.train.lr:g}, weight decay {s.train.weight_decay:g}, "
        f"{s.train.warmup_steps} warm-up steps, grad-norm clip {s.train.grad_clip:g}, batch {s.train.batch_size} samples "
        f"(DPO: {s.train.batch_size // 2} pairs), {e.steps} steps per objective; DPO beta {s.objective.dpo_beta:g}, "
        f"{_dro_push(s)}, t ~ logit-normal({s.objective.t_logit_mean:g}, {s.objective.t_logit_std:g}); "
        f"{_guidance(s)}.",
        f"- Held-out evaluation: {s.shapes.heldout_objects} objects x {s.shapes.heldout_views} views "
        f"{_family_mix(s.shapes)}x K = {s.eval.samples_per_prompt} samples = {result.base.samples} samples per model, "
        f"same seeds for every model; oracle: MuJoCo, tilt < {s.sim.tilt_threshold_deg:g} deg = stable; Chamfer / F-score@{s.eval.fscore_tau:g} "
        f"after unit-cube normalisation and ICP ({s.eval.surface_points} surface points).",
        "",
        "## Final numbers",
        "",
        markdown_table(result.final),
        "",
        "## Answers",
        "",
        *findings(result),
        "",
        "## Curves",
        "",
        f"![% stable, Chamfer and base footprint against training steps]({CURVES_PNG})",
        "",
        _curve_table(result),
        "",
        f"![training losses]({LOSSES_PNG})",
        "",
        "## Samples before / after",
        "",
        "Held-out prompts (left) and the first sample of each model with the same noise seed; the title is the oracle's verdict and final tilt.",
        "",
        f"![samples]({SAMPLES_PNG})",
        "",
        "## Training cost",
        "",
        "Step time and memory of DRO vs DPO: `python bench/learner.py`, docs/benchmarks.md section \"Learner\".",
        "",
        "## Notes",
        "",
        NOTES_BEGIN,
        _existing_notes(path),
        NOTES_END,
        "",
    ]
    path.write_text("\n".join(doc))


def write_all(result: ExperimentResult, settings: Settings, prompts, grids, command: str, device: str) -> Path:
    docs = Path(settings.experiment.docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    plot_curves(result, docs / CURVES_PNG)
    plot_losses(result, docs / LOSSES_PNG)
    plot_samples(prompts, grids, settings, docs / SAMPLES_PNG)
    target = docs / "results.md"
    write_results(result, settings, command, target, device)
    return target
