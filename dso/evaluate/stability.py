"""Held-out evaluation: generate K samples per held-out prompt, simulate them, compare them to the truth.

Per sample we record whether an object came out at all (% output), the oracle's
verdict (stable, tilt, rotation) and geometry fidelity against the prompt's
ground-truth object (Chamfer distance, F-score after unit-cube normalisation
and ICP), plus the footprint of its base relative to the truth's, which shows a
model "cheating" with flat base plates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import multiprocessing as mp
import numpy as np
from PIL import Image

from dso.config import EvalSettings, SimSettings
from dso.evaluate.geometry import compare_meshes
from dso.models.contract import ShapeSampler
from dso.models.mesh import occupancy_to_mesh
from dso.shapes.prompts import Prompt
from dso.sim.batch import label_batch, resolve_workers
from dso.sim.verdict import Outcome, Verdict


@dataclass
class SampleEval:
    """One generated sample on one held-out prompt."""

    prompt_id: str
    family: str
    seed: int
    output: bool  # an object came out (non-empty and simulable)
    status: str
    stable: bool
    tilt_deg: float  # nan when there is no output
    rotation_deg: float
    chamfer: float
    fscore: float
    base_area_ratio: float  # footprint of the lowest layers vs the truth's (> 1: wider base)
    occupied_voxels: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeldoutSamples:
    """Generated occupancy grids, row-aligned with (prompt index, seed)."""

    occupancy: np.ndarray  # bool [N, R, R, R]
    prompt_index: np.ndarray  # [N]
    seeds: np.ndarray  # [N]


def sample_seeds(prompt_index: int, settings: EvalSettings) -> list[int]:
    k = settings.samples_per_prompt
    return [settings.seed + prompt_index * k + j for j in range(k)]


def generate_heldout(generator: ShapeSampler, prompts: Sequence[Prompt], settings: EvalSettings, on_batch: Callable[[int], None] | None = None) -> HeldoutSamples:
    """K samples per prompt with fixed seeds, so every model is judged on the same noise."""
    occ, rows, seeds = [], [], []
    k = settings.samples_per_prompt
    for start in range(0, len(prompts), settings.batch_prompts):
        chunk = prompts[start : start + settings.batch_prompts]
        cond = generator.encode([Image.fromarray(p.image, "RGBA") for p in chunk]).repeat_interleave(k, dim=0)
        batch_seeds = [s for i in range(len(chunk)) for s in sample_seeds(start + i, settings)]
        occ.append(generator.decode(generator.sample_latents(cond, batch_seeds)))
        rows.extend(start + i for i in range(len(chunk)) for _ in range(k))
        seeds.extend(batch_seeds)
        if on_batch is not None:
            on_batch(len(chunk))
    return HeldoutSamples(np.concatenate(occ), np.array(rows), np.array(seeds))


def base_footprint(occupancy: np.ndarray, layers: int) -> int:
    """Cells of the (x, y) plane covered by the lowest ``layers`` occupied z-layers (z is the last axis)."""
    zs = np.flatnonzero(occupancy.any(axis=(0, 1)))
    if len(zs) == 0:
        return 0
    return int(occupancy[:, :, zs[0] : zs[0] + layers].any(axis=2).sum())


def _geometry_job(args: tuple[np.ndarray, np.ndarray, float, int, int, int]) -> tuple[float, float, float]:
    pred, ref, tau, points, iterations, layers = args
    if not pred.any():
        return math.nan, math.nan, math.nan
    score = compare_meshes(occupancy_to_mesh(pred), occupancy_to_mesh(ref), tau=tau, points=points, icp_iterations=iterations)
    ratio = base_footprint(pred, layers) / max(1, base_footprint(ref, layers))
    return score.chamfer, score.fscore, ratio


def geometry_scores(pairs: Sequence[tuple[np.ndarray, np.ndarray]], settings: EvalSettings, workers: int) -> list[tuple[float, float, float]]:
    """(chamfer, fscore, base ratio) per (pred, ref) pair; a process pool when workers > 1."""
    jobs = [(p, r, settings.fscore_tau, settings.surface_points, settings.icp_iterations, settings.base_layers) for p, r in pairs]
    if workers <= 1 or len(jobs) < 4:
        return [_geometry_job(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_geometry_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def score_samples(prompts: Sequence[Prompt], samples: HeldoutSamples, sim: SimSettings, settings: EvalSettings) -> list[SampleEval]:
    """Oracle verdicts and geometry metrics for every generated sample."""
    workers = resolve_workers(settings.workers, sim)
    verdicts: list[Verdict] = label_batch(list(samples.occupancy), sim, workers=workers)
    refs = [prompts[i].object.occupancy for i in samples.prompt_index]
    geometry = geometry_scores(list(zip(samples.occupancy, refs)), settings, workers)
    out = []
    for n, (verdict, (chamfer, fscore, ratio)) in enumerate(zip(verdicts, geometry)):
        prompt = prompts[samples.prompt_index[n]]
        output = verdict.outcome != Outcome.invalid
        ok = verdict.outcome.judged
        out.append(
            SampleEval(
                prompt_id=prompt.prompt_id,
                family=prompt.object.family,
                seed=int(samples.seeds[n]),
                output=output,
                status=verdict.status.value,
                stable=verdict.outcome == Outcome.stable,
                tilt_deg=float(verdict.tilt_deg) if ok and verdict.tilt_deg is not None else math.nan,
                rotation_deg=float(verdict.rotation_deg) if ok and verdict.rotation_deg is not None else math.nan,
                chamfer=chamfer if output else math.nan,
                fscore=fscore if output else math.nan,
                base_area_ratio=ratio if output else math.nan,
                occupied_voxels=int(samples.occupancy[n].sum()),
            )
        )
    return out


def evaluate_generator(generator: ShapeSampler, prompts: Sequence[Prompt], sim: SimSettings, settings: EvalSettings) -> list[SampleEval]:
    """Generate on ``prompts`` and score every sample (the whole held-out evaluation for one model)."""
    return score_samples(prompts, generate_heldout(generator, prompts, settings), sim, settings)
