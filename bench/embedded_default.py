"""How good is the shipped embedded default? Fidelity and stability on the held-out prompts, and a picture.

Generates K samples per held-out prompt with the shipped tiny model (no adapter),
scores them against the prompts' ground-truth objects (F-score@0.05 and Chamfer
after unit-cube normalisation and ICP; the oracle's verdict), and writes
``docs/embedded-default.md`` plus ``docs/embedded_samples.png`` (prompt image,
ground truth, samples marked stable / unstable).

    python bench/embedded_default.py            # 96 prompts x 4 samples
    python bench/embedded_default.py --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dso.config import load_settings
from dso.evaluate.report import by_family, markdown_table, summarize
from dso.evaluate.stability import evaluate_generator
from dso.models.factory import training_record
from dso.models.generator import Generator
from dso.shapes.prompts import heldout_prompts
from dso.shapes.render import render_occupancy

DOCS = Path(__file__).resolve().parent.parent / "docs"
PICTURE_PROMPTS = 8


def _on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4] / 255.0
    return (rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


def picture(prompts, generator: Generator, settings, path: Path, samples: int = 3) -> None:
    """One row per prompt: prompt image | ground truth | ``samples`` generated shapes (green = stands, red = falls)."""
    from dso.sim.oracle import simulate

    tile = settings.shapes.render_size
    rows = []
    chosen = prompts[:: max(1, len(prompts) // PICTURE_PROMPTS)][:PICTURE_PROMPTS]
    shapes = generator.generate([Image.fromarray(p.image, "RGBA") for p in chosen], samples_per_image=samples, seed=11)
    for i, p in enumerate(chosen):
        cells = [_on_white(p.image), _on_white(render_occupancy(p.object.occupancy, p.camera, tile, parts=p.object.parts))]
        for s in shapes[i * samples : (i + 1) * samples]:
            img = Image.fromarray(_on_white(render_occupancy(s.occupancy, p.camera, tile)))
            v = simulate(s.occupancy, settings.sim)
            colour = (40, 160, 60) if v.status == "ok" and v.stable else (200, 40, 40)
            ImageDraw.Draw(img).rectangle([1, 1, tile - 2, tile - 2], outline=colour, width=3)
            ImageDraw.Draw(img).text((6, 4), f"tilt {v.tilt_deg:.0f}", fill=colour)
            cells.append(np.asarray(img))
        rows.append(np.concatenate(cells, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--objects", type=int, default=48, help="held-out objects (x heldout_views views)")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=DOCS)
    args = ap.parse_args()
    settings = load_settings(args.config)
    settings.shapes.heldout_objects = 8 if args.quick else args.objects
    settings.eval.samples_per_prompt = 2 if args.quick else args.samples
    prompts = heldout_prompts(settings.shapes)
    generator = Generator.from_settings(settings)
    start = time.time()
    results = evaluate_generator(generator, prompts, settings.sim, settings.eval)
    seconds = time.time() - start
    overall = summarize(results)
    families = by_family(results)
    args.out.mkdir(parents=True, exist_ok=True)
    picture(prompts, generator, settings, args.out / "embedded_samples.png")
    record = training_record(settings.model) or {}
    fall = 100.0 - overall.pct_stable
    text = [
        "# The embedded default generator",
        "",
        "The shipped tiny model (`dso/assets/tiny`, TRELLIS stage-1 architecture at a tiny size) on the held-out "
        f"prompt set: {len(prompts)} prompt images ({settings.shapes.heldout_objects} procedural objects never seen in "
        f"pretraining x {settings.shapes.heldout_views} views), {settings.eval.samples_per_prompt} samples each, "
        f"{overall.samples} samples in all. Regenerate with `python bench/embedded_default.py` ({seconds:.0f} s here).",
        "",
        markdown_table({"base (no adapter)": overall}),
        "",
        f"**{fall:.1f} % of the samples fall over** under the oracle (`dso.sim`, default settings), while the ground-truth "
        "objects all stand (pretraining dropped the few that did not).",
        "",
        "Per family:",
        "",
        markdown_table(families, label="family"),
        "",
        "Geometry is scored against the prompt's ground-truth object after unit-cube normalisation and ICP "
        "(`dso.evaluate.geometry`). The prompt set's family mix is `shapes.prompt_family_weights` in "
        "`configs/tiny.yaml`: the uniform mix gave only about 7 % falls (27 of 400 samples), almost all in legged "
        "furniture (thin legs that come out shorter or broken), so, as the issue asks, the prompt families were made "
        "harder (more thin-legged furniture and narrow-based objects) rather than the model worse. Pretraining keeps "
        "the uniform mix.",
        "",
        "![prompts, ground truth and samples](embedded_samples.png)",
        "",
        "Each row: prompt image, ground truth, three samples (green frame: stands; red: falls; tilt in degrees).",
        "",
        "## How it was trained",
        "",
        "```",
        json.dumps(record, indent=2),
        "```",
        "",
    ]
    (args.out / "embedded-default.md").write_text("\n".join(text))
    print("\n".join(text[:12]))


if __name__ == "__main__":
    main()
