"""Geometry fidelity as in the paper's Table 1: Chamfer distance and F-score@0.05.

Both shapes are normalised to the unit cube (bounding box centred at the origin,
longest side 1), the prediction is rigidly aligned to the reference with ICP
(trimesh.registration.icp), then nearest-neighbour distances (scipy cKDTree)
between surface samples give:
- Chamfer distance: the mean of the two directed mean Euclidean distances;
- F-score@tau: harmonic mean of precision (pred points within tau of the
  reference) and recall (reference points within tau of the prediction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import trimesh
from scipy.spatial import cKDTree
from trimesh.registration import icp

DEFAULT_POINTS = 4096
DEFAULT_TAU = 0.05


@dataclass(frozen=True)
class GeometryScore:
    chamfer: float
    fscore: float
    precision: float
    recall: float

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_unit_cube(points: np.ndarray) -> np.ndarray:
    """Centre the bounding box at the origin and scale its longest side to 1."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError("cannot normalise a degenerate point set (zero extent)")
    return (points - (lo + hi) / 2) / extent


def surface_points(mesh: trimesh.Trimesh, count: int = DEFAULT_POINTS, seed: int = 0) -> np.ndarray:
    if len(mesh.faces) == 0:
        raise ValueError("mesh has no faces")
    pts, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(pts, dtype=np.float64)


def align_icp(source: np.ndarray, target: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Rigidly align ``source`` points to ``target`` (no scaling), starting from the identity."""
    matrix, aligned, _ = icp(source, target, initial=np.eye(4), max_iterations=iterations, reflection=False, scale=False)
    return np.asarray(aligned)


def compare_points(pred: np.ndarray, ref: np.ndarray, tau: float = DEFAULT_TAU) -> GeometryScore:
    d_pred = cKDTree(ref).query(pred)[0]
    d_ref = cKDTree(pred).query(ref)[0]
    precision = float((d_pred < tau).mean())
    recall = float((d_ref < tau).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return GeometryScore(chamfer=float(0.5 * (d_pred.mean() + d_ref.mean())), fscore=f, precision=precision, recall=recall)


def compare_meshes(
    pred: trimesh.Trimesh,
    ref: trimesh.Trimesh,
    tau: float = DEFAULT_TAU,
    points: int = DEFAULT_POINTS,
    seed: int = 0,
    align: bool = True,
    icp_iterations: int = 50,
) -> GeometryScore:
    """Chamfer and F-score of ``pred`` against ``ref`` after unit-cube normalisation and ICP."""
    p = normalize_unit_cube(surface_points(pred, points, seed))
    r = normalize_unit_cube(surface_points(ref, points, seed + 1))
    if align:
        p = align_icp(p, r, iterations=icp_iterations)
    return compare_points(p, r, tau)
