"""Seeded procedural objects that stand, many of them only just.

Each family builder draws a parametric object from a handful of solids
(``dso.shapes.families``). The object is then *leaned*: a shear above its feet moves
its centre of mass towards the edge of its support polygon until the support
margin hits a drawn target. Most objects therefore stand by a small margin, so a
slightly wrong copy falls over, which is what the stability oracle needs to see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dso.config import ShapesSettings
from dso.shapes.families import BUILDERS, Blueprint
from dso.shapes.stability import (
    center_of_mass,
    signed_distance_inside,
    support_margin,
    support_polygon,
    tipping_angle,
)
from dso.shapes.validity import grid_problems
from dso.shapes.voxelize import Pose, voxel_centers, voxelize, world_bounds

FAMILIES: tuple[str, ...] = ("biped", "quadruped", "slender", "furniture", "top_heavy")
MIN_RESOLUTION = 16
LEAN_SEARCH_STEPS = 257  # lean values tried along the drawn direction (the margin there is cheap to predict)
LEAN_BACKOFF_TRIES = 4  # halvings of the lean when voxelisation lands below the minimum margin

__all__ = [
    "FAMILIES",
    "ProceduralObject",
    "sample_object",
    "family_of_seed",
    "support_margin",
    "center_of_mass",
    "support_polygon",
    "tipping_angle",
    "grid_problems",
]


@dataclass
class ProceduralObject:
    """One generated object: occupancy (bool R^3, x/y/z indexed, z up) and part labels (uint8, 0 = empty)."""

    occupancy: np.ndarray
    parts: np.ndarray
    family: str
    seed: int
    params: dict = field(default_factory=dict)
    kind: str = ""  # sub-type within the family, e.g. "lamp" or "giraffe"
    margin: float = 0.0  # support margin of ``occupancy`` (unit-cube units)

    @property
    def resolution(self) -> int:
        return int(self.occupancy.shape[0])


class _Rejected(Exception):
    """A drawn object failed a check; the sampler draws again."""


def sample_object(
    seed: int, resolution: int = 64, family: str | None = None, settings: ShapesSettings | None = None
) -> ProceduralObject:
    """The object for ``seed`` at ``resolution`` (deterministic for a given seed, resolution and settings).

    ``family`` None lets the seed choose one by settings.family_weights. The object is
    redrawn (from the same seeded stream) until it passes every check: one 6-connected
    piece touching the ground, clear of the grid's side faces, inside the unit cube,
    and standing with at least settings.min_margin / settings.min_tip_angle_deg.
    """
    settings = settings or ShapesSettings()
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be >= {MIN_RESOLUTION}, got {resolution}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    rng = np.random.default_rng(seed)
    chosen = _choose_family(rng, settings)  # always drawn, so a seed's stream is the same either way
    family = family or chosen
    reasons: list[str] = []
    for attempt in range(settings.max_attempts):
        blueprint = BUILDERS[family](rng)
        yaw = float(rng.uniform(0.0, 2 * np.pi)) if settings.random_yaw else 0.0
        direction = float(rng.uniform(0.0, 2 * np.pi))
        marginal = bool(rng.uniform() < settings.marginal_fraction)
        target = float(rng.uniform(*settings.marginal_margin))
        natural = float(rng.uniform(-settings.natural_lean, settings.natural_lean))
        try:
            obj = _realise(blueprint, resolution, yaw, direction, target if marginal else None, natural, settings)
        except _Rejected as why:
            reasons.append(f"{blueprint.kind}: {why}")
            continue
        obj.family, obj.seed = family, int(seed)
        obj.params.update(attempt=attempt, marginal=marginal)
        return obj
    raise RuntimeError(f"seed {seed}: no valid {family} object in {settings.max_attempts} draws: {reasons[-3:]}")


def family_of_seed(seed: int, settings: ShapesSettings | None = None) -> str:
    """The family ``sample_object(seed)`` picks when none is asked for (cheap: no geometry is built)."""
    return _choose_family(np.random.default_rng(seed), settings or ShapesSettings())


def _choose_family(rng: np.random.Generator, settings: ShapesSettings) -> str:
    unknown = set(settings.family_weights) - set(FAMILIES)
    if unknown:
        raise ValueError(f"family_weights names unknown families {sorted(unknown)}")
    weights = np.array([max(settings.family_weights.get(f, 0.0), 0.0) for f in FAMILIES])
    if weights.sum() <= 0:
        raise ValueError("family_weights must give some family a positive weight")
    return FAMILIES[int(rng.choice(len(FAMILIES), p=weights / weights.sum()))]


def _lean_limit(lo: np.ndarray, hi: np.ndarray, direction: np.ndarray, height: float, limit: float) -> float:
    """Largest shear along ``direction`` keeping the x/y bounds inside [-limit, limit]."""
    best = np.inf
    for axis in range(2):
        d = direction[axis] * height
        if d > 1e-12:
            best = min(best, (limit - hi[axis]) / d)
        elif d < -1e-12:
            best = min(best, (lo[axis] + limit) / -d)
    return max(best, 0.0)


def _realise(
    blueprint: Blueprint,
    resolution: int,
    yaw: float,
    direction_angle: float,
    target: float | None,
    natural: float,
    settings: ShapesSettings,
) -> ProceduralObject:
    """Voxelise a blueprint, then lean it to the target margin (or by ``natural``), and check the result."""
    onset = max(blueprint.onset, -0.5 + 1.0 / resolution)  # the ground layer never shears
    upright = Pose(yaw=yaw, onset=onset)
    lo, hi = world_bounds(blueprint.solids, upright)
    limit = 0.5 - 1.0 / resolution
    if lo[:2].min() < -limit or hi[:2].max() > limit or hi[2] > 0.5:  # below z = -0.5 the ground cuts it off
        raise _Rejected("outside the unit cube")
    supersample = 2 if resolution < settings.supersample_below else 1
    occupancy, _ = voxelize(blueprint.solids, resolution, upright, supersample)
    problems = grid_problems(occupancy)
    if problems:
        raise _Rejected("; ".join(problems))

    com = center_of_mass(occupancy)
    z = voxel_centers(resolution)
    lever = float((occupancy.sum(axis=(0, 1)) * np.maximum(z - onset, 0.0)).sum() / occupancy.sum())
    polygon = support_polygon(occupancy)
    height = max(hi[2] - onset, 0.0)

    def predict(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Leans tried along ``direction`` and the support margin each would give (CoM moves by lean * lever)."""
        s_max = min(settings.max_lean, _lean_limit(lo, hi, direction, height, limit))
        s_min = -min(settings.max_lean, _lean_limit(lo, hi, -direction, height, limit))
        leans = np.linspace(s_min, s_max, LEAN_SEARCH_STEPS)
        return leans, signed_distance_inside(com[:2] + leans[:, None] * lever * direction, polygon)

    direction = np.array([np.cos(direction_angle), np.sin(direction_angle)])
    leans, predicted = predict(direction)
    if target is not None and predicted[-1] > target:
        # The drawn direction cannot bring the margin down to the target: lean towards the nearest edge.
        direction_angle = _nearest_edge_angle(com[:2], polygon)
        direction = np.array([np.cos(direction_angle), np.sin(direction_angle)])
        leans, predicted = predict(direction)
    # The lean only moves mass sideways, so the CoM height (and with it the margin a tall object needs) is fixed.
    tip_slope = np.tan(np.deg2rad(settings.min_tip_angle_deg))
    floor = max(settings.min_margin, tip_slope * (com[2] + 0.5))
    peak = int(np.argmax(predicted))
    if predicted[peak] < floor:
        raise _Rejected(f"cannot stand: best predicted margin {predicted[peak]:.4f} < {floor:.4f}")
    lean = _choose_lean(leans, predicted, peak, None if target is None else max(target, floor), natural, floor)

    for _ in range(LEAN_BACKOFF_TRIES):
        pose = Pose(yaw=yaw, lean=(float(lean * direction[0]), float(lean * direction[1])), onset=onset)
        occupancy, parts = voxelize(blueprint.solids, resolution, pose, supersample)
        margin = support_margin(occupancy)
        floor = max(settings.min_margin, tip_slope * (center_of_mass(occupancy)[2] + 0.5))  # exact, after voxelising
        if margin >= floor:
            break
        lean = leans[peak] + 0.5 * (lean - leans[peak])
    else:
        raise _Rejected(f"margin {margin:.4f} below the floor {floor:.4f} after backing off the lean")
    problems = grid_problems(occupancy)
    if problems:
        raise _Rejected("; ".join(problems))
    params = dict(blueprint.params)
    params.update(
        lean=float(lean),
        lean_direction=float(direction_angle),
        yaw=float(yaw),
        target_margin=None if target is None else float(target),
    )
    return ProceduralObject(occupancy, parts, "", 0, params, kind=blueprint.kind, margin=float(margin))


def _nearest_edge_angle(point: np.ndarray, polygon: np.ndarray) -> float:
    """Angle of the direction from ``point`` to the closest point of the polygon's boundary."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    edge = b - a
    t = np.clip(((point - a) * edge).sum(axis=1) / (edge * edge).sum(axis=1), 0.0, 1.0)
    nearest = a + t[:, None] * edge
    offset = nearest[np.argmin(np.linalg.norm(nearest - point, axis=1))] - point
    return float(np.arctan2(offset[1], offset[0]))


def _choose_lean(
    leans: np.ndarray, predicted: np.ndarray, peak: int, target: float | None, natural: float, min_margin: float
) -> float:
    """Pick the shear: the first one past the peak whose predicted margin drops to ``target``, else ``natural``."""
    if target is not None:
        if predicted[peak] <= target:
            return float(leans[peak])
        beyond = np.nonzero(predicted[peak:] <= target)[0]
        if beyond.size == 0:
            return float(leans[-1])  # the bounds stop the lean first: as marginal as it gets
        k = peak + int(beyond[0])
        m0, m1 = predicted[k - 1], predicted[k]  # linear interpolation between the bracketing leans
        w = (m0 - target) / (m0 - m1) if m0 != m1 else 1.0
        return float(leans[k - 1] + w * (leans[k] - leans[k - 1]))
    ok = np.nonzero(predicted >= min_margin)[0]
    return float(leans[ok[np.argmin(np.abs(leans[ok] - natural))]])
