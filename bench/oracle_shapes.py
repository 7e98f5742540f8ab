"""Benchmark shapes for the stability oracle: procedural objects and noisy variants of them.

Uses dso.shapes.procedural when it is available; otherwise a small set of
parametric figures defined here (tables, bipeds, poles, top-heavy and
overhanging shapes), so the benchmark runs on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dso.sim.perturb import noisy_variant


@dataclass
class BenchShape:
    name: str
    family: str
    occupancy: np.ndarray


def _box(occ: np.ndarray, lo, hi) -> None:
    n = occ.shape[0]
    lo = np.clip(np.asarray(lo, int), 0, n)
    hi = np.clip(np.asarray(hi, int), 0, n)
    occ[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True


def _fallback_object(rng: np.random.Generator, n: int) -> tuple[str, np.ndarray]:
    occ = np.zeros((n, n, n), dtype=bool)
    c = n // 2
    family = str(rng.choice(["table", "biped", "pole", "top_heavy", "overhang"]))
    if family == "table":
        w, d, h = rng.integers(n // 4, n // 2, size=3)
        leg = int(rng.integers(2, 5))
        top_shift = int(rng.integers(-w, w + 1)) if rng.random() < 0.4 else 0
        for sx in (-1, 1):
            for sy in (-1, 1):
                x0, y0 = c + sx * w // 2 - (leg if sx > 0 else 0), c + sy * d // 2 - (leg if sy > 0 else 0)
                _box(occ, (x0, y0, 0), (x0 + leg, y0 + leg, h))
        _box(occ, (c - w // 2 + top_shift, c - d // 2, h), (c + w // 2 + top_shift, c + d // 2, h + 3))
    elif family == "biped":
        gap, leg, h = int(rng.integers(2, 10)), int(rng.integers(3, 7)), int(rng.integers(10, 25))
        for s in (-1, 1):
            x0 = c + s * gap // 2 - (0 if s > 0 else leg)
            _box(occ, (x0, c - 3, 0), (x0 + leg, c + 3, h))
        tw, th = gap + 2 * leg + int(rng.integers(0, 8)), int(rng.integers(10, 25))
        shift = int(rng.integers(-tw, tw + 1)) if rng.random() < 0.5 else 0
        _box(occ, (c - tw // 2 + shift, c - 5, h), (c + tw // 2 + shift, c + 5, h + th))
        _box(occ, (c - 4 + shift, c - 4, h + th), (c + 4 + shift, c + 4, h + th + 8))
    elif family == "pole":
        r, h = int(rng.integers(2, 5)), int(rng.integers(30, n - 2))
        base = int(rng.integers(r, 3 * r + 1))
        _box(occ, (c - base, c - base, 0), (c + base, c + base, 2))
        _box(occ, (c - r, c - r, 2), (c + r, c + r, h))
    elif family == "top_heavy":
        s, h = int(rng.integers(3, 10)), int(rng.integers(10, 30))
        top = int(rng.integers(8, n // 2 - 2))
        shift = int(rng.integers(-top // 2, top // 2 + 1))
        _box(occ, (c - s, c - s, 0), (c + s, c + s, h))
        _box(occ, (c - top + shift, c - top // 2, h), (c + top + shift, c + top // 2, h + int(rng.integers(4, 16))))
    else:  # overhang: post with an arm
        foot, h = int(rng.integers(3, 12)), int(rng.integers(20, 50))
        arm = int(rng.integers(5, n // 2 - 2))
        _box(occ, (c - foot, c - foot, 0), (c + foot, c + foot, 3))
        _box(occ, (c - 2, c - 2, 3), (c + 2, c + 2, h))
        _box(occ, (c - 2, c - 3, h), (c + arm, c + 3, h + int(rng.integers(3, 10))))
    return family, occ


def _procedural():
    try:
        from dso.shapes.procedural import sample_object  # written by another helper
    except Exception:
        return None
    return sample_object


def bench_shapes(count: int, resolution: int = 64, seed: int = 0) -> tuple[list[BenchShape], str]:
    """``count`` shapes: alternately a clean object and a noisy variant; also names the shape source."""
    rng = np.random.default_rng(seed)
    sample_object = _procedural()
    source = "dso.shapes.procedural" if sample_object is not None else "bench fallback figures"
    shapes: list[BenchShape] = []
    i = 0
    while len(shapes) < count:
        if sample_object is not None:
            obj = sample_object(seed * 100_003 + i, resolution=resolution)
            family, occ = str(obj.family), np.asarray(obj.occupancy, dtype=bool)
        else:
            family, occ = _fallback_object(rng, resolution)
        i += 1
        if occ.sum() < 2:
            continue
        shapes.append(BenchShape(f"{family}-{i}", family, occ))
        if len(shapes) < count:
            noisy, how = noisy_variant(occ, rng)
            shapes.append(BenchShape(f"{family}-{i}-{how}", family, noisy))
    return shapes, source
