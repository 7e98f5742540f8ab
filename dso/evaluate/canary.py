"""The canary's probe: a fixed set of prompts x seeds, sampled by a candidate and scored against the base.

Every model is sampled on the same prompts with the same noise (seed ``canary.seed + p * seeds + j`` for
sample j of prompt p), so a candidate's sample and the base model's sample at one (prompt, seed) differ
only by the adapter. That pairing is what makes a small probe informative:

- ``paired_drift``: Chamfer between the candidate's and the base's sample at the same (prompt, seed), in
  the generator's own frame (both live in the same unit cube; no normalisation, no ICP). It is the
  distance the adapter moved the output, independent of how good either is.
- ``diversity``: mean pairwise Chamfer across the seeds of one prompt, same frame; a collapsing adapter
  (every seed gives the same shape) shows up here.
- ``chamfer`` / ``fscore`` to ground truth (unit cube + ICP, as :mod:`dso.evaluate.geometry`) where the
  prompt has one (a user's prompt has none: NaN).
- ``footprint_ratio``: base footprint of the sample / of the truth (the "wide plate" cheat).
- ``stable_ratio``: the oracle's verdict; an empty or invalid sample counts as not stable.

Surface points are sampled once per mesh (seeded by the sample's row, so identical meshes give identical
points) and reused for every distance; the base's geometry is computed once and kept with its samples.
Pure: no Redis, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

from dso.config import CanarySettings, Settings, SimSettings
from dso.evaluate.geometry import align_icp, compare_points, normalize_unit_cube, surface_points
from dso.evaluate.stability import base_footprint
from dso.models.contract import ShapeSampler
from dso.models.mesh import occupancy_to_mesh
from dso.shapes.prompts import heldout_prompts
from dso.sim.contract import make_oracle
from dso.sim.verdict import Outcome


@dataclass(frozen=True)
class ProbePrompt:
    """One probe prompt: its image and, when known, the object it shows."""

    prompt_id: str
    image: np.ndarray  # RGBA uint8
    truth: np.ndarray | None  # bool occupancy of the ground-truth object; None for a user's prompt


@dataclass(frozen=True)
class TruthGeometry:
    points: np.ndarray  # unit-cube normalised surface points
    footprint: int


@dataclass
class ProbeSet:
    """The fixed probe: prompts x ``seeds`` seeds, plus the ground truth's geometry (computed once)."""

    prompts: list[ProbePrompt]
    seeds: int
    seed: int
    truths: list[TruthGeometry | None] = field(default_factory=list)

    @classmethod
    def build(cls, prompts: Sequence[Any], settings: CanarySettings) -> "ProbeSet":
        """From the first ``settings.prompts`` prompts (anything with ``.image``; ``.object.occupancy`` if known)."""
        chosen = [
            ProbePrompt(str(getattr(p, "prompt_id", i)), p.image, _truth_of(p))
            for i, p in enumerate(list(prompts)[: settings.prompts])
        ]
        if not chosen:
            raise ValueError("a probe set needs at least one prompt")
        truths = [_truth_geometry(p.truth, i, settings) for i, p in enumerate(chosen)]
        return cls(chosen, settings.seeds, settings.seed, truths)

    def __len__(self) -> int:
        return len(self.prompts) * self.seeds

    def seeds_of(self, prompt_index: int) -> list[int]:
        return [self.seed + prompt_index * self.seeds + j for j in range(self.seeds)]

    def prompt_of(self, row: int) -> int:
        return row // self.seeds


def heldout_probe(settings: Settings) -> ProbeSet:
    """The default probe: the first ``canary.prompts`` held-out prompts (never trained on) with their truth."""
    return ProbeSet.build(heldout_prompts(settings.shapes), settings.canary)


def _truth_of(prompt: Any) -> np.ndarray | None:
    obj = getattr(prompt, "object", None)
    occupancy = getattr(obj, "occupancy", None)
    return None if occupancy is None else np.asarray(occupancy, dtype=bool)


def _truth_geometry(truth: np.ndarray | None, index: int, settings: CanarySettings) -> TruthGeometry | None:
    if truth is None or not truth.any():
        return None
    mesh = occupancy_to_mesh(truth)
    points = normalize_unit_cube(surface_points(mesh, settings.surface_points, seed=settings.seed + index))
    return TruthGeometry(points, base_footprint(truth, settings.base_layers))


@dataclass
class SampleGeometry:
    """What the distances need of one generated sample: its surface points (None when empty) and footprint."""

    points: np.ndarray | None  # shared frame ([-0.5, 0.5]^3 of the generator)
    footprint: int
    _tree: cKDTree | None = field(default=None, repr=False)

    @property
    def tree(self) -> cKDTree:
        if self._tree is None:
            self._tree = cKDTree(self.points)
        return self._tree


@dataclass
class ProbeSamples:
    """One model's probe samples, row n = prompt ``n // seeds``, seed index ``n % seeds``."""

    occupancy: np.ndarray  # bool [N, R, R, R]
    _geometry: list[SampleGeometry] | None = field(default=None, repr=False)

    def geometry(self, settings: CanarySettings) -> list[SampleGeometry]:
        """Surface points and footprint per sample, computed on first use and kept."""
        if self._geometry is None:
            self._geometry = [_sample_geometry(occ, n, settings) for n, occ in enumerate(self.occupancy)]
        return self._geometry


def _sample_geometry(occupancy: np.ndarray, row: int, settings: CanarySettings) -> SampleGeometry:
    if not occupancy.any():
        return SampleGeometry(None, 0)
    mesh = occupancy_to_mesh(occupancy)
    if len(mesh.faces) == 0:
        return SampleGeometry(None, 0)
    # seeded by row: the same mesh at the same row gives the same points (paired drift of a model with itself is 0)
    return SampleGeometry(surface_points(mesh, settings.surface_points, seed=row), base_footprint(occupancy, settings.base_layers))


def generate_probe(generator: ShapeSampler, probe: ProbeSet, settings: CanarySettings) -> ProbeSamples:
    """The probe samples of ``generator``'s current weights (fixed seeds: the same noise for every model)."""
    chunks = []
    step = settings.batch_prompts
    for start in range(0, len(probe.prompts), step):
        prompts = probe.prompts[start : start + step]
        cond = generator.encode([Image.fromarray(p.image, "RGBA") for p in prompts]).repeat_interleave(probe.seeds, dim=0)
        seeds = [s for i in range(len(prompts)) for s in probe.seeds_of(start + i)]
        chunks.append(generator.decode(generator.sample_latents(cond, seeds)))
    return ProbeSamples(np.concatenate(chunks).astype(bool))


def shared_frame_chamfer(a: SampleGeometry, b: SampleGeometry, empty_distance: float) -> float:
    """Chamfer of two samples in the generator's frame; two empties are equal, one empty is ``empty_distance`` away."""
    if a.points is None or b.points is None:
        return 0.0 if a.points is None and b.points is None else empty_distance
    return float(0.5 * (b.tree.query(a.points)[0].mean() + a.tree.query(b.points)[0].mean()))


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _stability(samples: ProbeSamples, sim: SimSettings) -> list[bool]:
    """Oracle verdicts in-process (the probe is small; a process pool would cost more to start than to run)."""
    oracle = make_oracle(sim)  # the oracle sim.oracle names, the one that labels the loop's samples
    return [oracle.simulate(occupancy).outcome == Outcome.stable for occupancy in samples.occupancy]


NO_TRUTH = (math.nan, math.nan, math.nan)


def _truth_score(sample: SampleGeometry, truth: TruthGeometry | None, settings: CanarySettings) -> tuple[float, float, float]:
    """Chamfer, F-score and footprint ratio of one sample to its prompt's ground truth (NaN where none or empty)."""
    if truth is None or sample.points is None:
        return NO_TRUTH
    try:
        points = normalize_unit_cube(sample.points)
    except ValueError:  # a degenerate (zero-extent) surface: nothing to align
        return NO_TRUTH
    aligned = align_icp(points, truth.points, iterations=settings.icp_iterations)
    score = compare_points(aligned, truth.points, settings.fscore_tau)
    return score.chamfer, score.fscore, sample.footprint / max(1, truth.footprint)


def _diversity(geometry: list[SampleGeometry], probe: ProbeSet, empty_distance: float) -> float:
    per_prompt = []
    for p in range(len(probe.prompts)):
        rows = geometry[p * probe.seeds : (p + 1) * probe.seeds]
        pairs = [shared_frame_chamfer(a, b, empty_distance) for a, b in combinations(rows, 2)]
        per_prompt.append(float(np.mean(pairs)))
    return float(np.mean(per_prompt))


def score_probe(
    samples: ProbeSamples,
    base_samples: ProbeSamples,
    probe: ProbeSet,
    sim_settings: SimSettings,
    canary_settings: CanarySettings,
) -> dict[str, float]:
    """The canary's scores of one model's probe samples (keys: dso.telemetry.CANARY_SCORES plus counts)."""
    n = len(probe)
    if len(samples.occupancy) != n or len(base_samples.occupancy) != n:
        raise ValueError(f"probe has {n} samples; got {len(samples.occupancy)} and base {len(base_samples.occupancy)}")
    geometry = samples.geometry(canary_settings)
    base = base_samples.geometry(canary_settings)
    stable = _stability(samples, sim_settings)
    ratio = sum(stable) / n
    drift = [shared_frame_chamfer(c, b, canary_settings.empty_distance) for c, b in zip(geometry, base)]
    truth = [_truth_score(g, probe.truths[probe.prompt_of(row)], canary_settings) for row, g in enumerate(geometry)]
    chamfer, fscore, footprint = (list(column) for column in zip(*truth))
    return {
        "stable_ratio": ratio,
        "stable_n": float(n),
        "stable_se": math.sqrt(ratio * (1 - ratio) / n),
        "paired_drift": float(np.mean(drift)),
        "chamfer": _nanmean(chamfer),
        "fscore": _nanmean(fscore),
        "footprint_ratio": _nanmean(footprint),
        "diversity": _diversity(geometry, probe, canary_settings.empty_distance),
        "empty_ratio": sum(g.points is None for g in geometry) / n,
    }
