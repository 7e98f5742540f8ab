"""Tall slender objects: lamps, trees, vases and bottles. Small footprint, high centre of mass."""

from __future__ import annotations

import numpy as np

from dso.shapes.families.blueprint import GROUND, Blueprint, draw, pick
from dso.shapes.parts import Part
from dso.shapes.primitives import Capsule, Cylinder, Ellipsoid, Frustum, Lathe, Solid

KINDS = ("lamp", "tree", "vase", "bottle")


def build(rng: np.random.Generator) -> Blueprint:
    """A lamp, tree, vase or bottle standing upright."""
    params: dict = {}
    kind = pick(rng, params, "kind", KINDS)
    return {"lamp": _lamp, "tree": _tree, "vase": _vase, "bottle": _bottle}[kind](rng, params)


def _lamp(rng, params) -> Blueprint:
    base_r = draw(rng, params, "base_radius", 0.06, 0.16)
    base_t = draw(rng, params, "base_thickness", 0.035, 0.06)
    pole_r = draw(rng, params, "pole_radius", 0.035, 0.05)
    top = GROUND + draw(rng, params, "height", 0.55, 0.92)
    shade_h = draw(rng, params, "shade_height", 0.08, 0.2)
    shade_lo = draw(rng, params, "shade_bottom_radius", 0.09, 0.2)
    shade_hi = draw(rng, params, "shade_top_radius", 0.04, 0.12)
    arm = draw(rng, params, "arm_reach", 0.08, 0.22) if rng.uniform() < 0.4 else 0.0
    params["arm_reach"] = arm
    solids: list[Solid] = [
        Cylinder(Part.BASE, (0.0, 0.0, GROUND), (0.0, 0.0, GROUND + base_t), base_r),
        Cylinder(Part.LEG, (0.0, 0.0, GROUND + base_t / 2), (0.0, 0.0, top - (0.0 if arm else shade_h / 2)), pole_r),
    ]
    if arm:
        solids.append(Capsule(Part.ARM, (0.0, 0.0, top - 0.01), (arm, 0.0, top - 0.01), pole_r))
    solids.append(Frustum(Part.TOP, (arm, 0.0, top - shade_h), (arm, 0.0, top), shade_lo, shade_hi))
    return Blueprint("lamp", solids, GROUND + base_t, params)


def _tree(rng, params) -> Blueprint:
    trunk_r = draw(rng, params, "trunk_radius", 0.045, 0.09)
    trunk_top = GROUND + draw(rng, params, "trunk_height", 0.2, 0.5)
    crown = pick(rng, params, "crown", ("round", "conifer"))
    solids: list[Solid] = [
        Frustum(Part.BODY, (0.0, 0.0, GROUND), (0.0, 0.0, trunk_top + 0.05), trunk_r, trunk_r * 0.7),
    ]
    shift = np.array([draw(rng, params, "crown_shift_x", -0.05, 0.05), draw(rng, params, "crown_shift_y", -0.05, 0.05)])
    if crown == "round":
        r = draw(rng, params, "crown_radius", 0.12, 0.26)
        rz = min(r * draw(rng, params, "crown_squash", 0.8, 1.4), (0.45 - trunk_top) / 2)
        solids.append(Ellipsoid(Part.TOP, (shift[0], shift[1], trunk_top + rz * 0.9), (r, r, rz)))
        if rng.uniform() < 0.5:
            side = draw(rng, params, "branch_angle", 0.0, 2 * np.pi)
            tip = (0.22 * np.cos(side), 0.22 * np.sin(side), trunk_top + 0.05)
            solids.append(Capsule(Part.ARM, (0.0, 0.0, trunk_top - 0.1), tip, 0.04))
            solids.append(Ellipsoid(Part.TOP, tip, (0.09, 0.09, 0.08)))
    else:
        tiers = int(rng.integers(2, 4))
        params["tiers"] = tiers
        r = draw(rng, params, "crown_radius", 0.14, 0.26)
        z = trunk_top - 0.02
        tier_h = (0.45 - z) / tiers
        for tier in range(tiers):
            radius = r * (1.0 - 0.25 * tier)
            bottom, apex = (shift[0], shift[1], z), (shift[0], shift[1], z + tier_h * 1.3)
            solids.append(Frustum(Part.TOP, bottom, apex, radius, 0.03))
            z += tier_h * 0.85
    onset = GROUND + 0.04
    return Blueprint("tree", solids, onset, params)


def _vase(rng, params) -> Blueprint:
    height = draw(rng, params, "height", 0.45, 0.85)
    foot_r = draw(rng, params, "foot_radius", 0.05, 0.1)
    foot_t = draw(rng, params, "foot_thickness", 0.03, 0.06)
    belly_r = draw(rng, params, "belly_radius", 0.1, 0.22)
    belly_at = draw(rng, params, "belly_height", 0.3, 0.75)
    neck_r = draw(rng, params, "neck_radius", 0.04, 0.09)
    lip_r = neck_r * draw(rng, params, "lip_flare", 1.0, 1.8)
    top = GROUND + height
    body_lo = GROUND + foot_t
    span = top - body_lo
    zs = (body_lo - 0.01, body_lo + 0.02, body_lo + belly_at * span, body_lo + 0.88 * span, top)
    radii = (foot_r * 0.9, foot_r, belly_r, neck_r, lip_r)
    solids: list[Solid] = [
        Cylinder(Part.BASE, (0.0, 0.0, GROUND), (0.0, 0.0, body_lo), foot_r),
        Lathe(Part.BODY, (0.0, 0.0), zs[:-1], radii[:-1]),
        Lathe(Part.TOP, (0.0, 0.0), zs[-2:], radii[-2:]),
    ]
    return Blueprint("vase", solids, body_lo, params)


def _bottle(rng, params) -> Blueprint:
    body_r = draw(rng, params, "body_radius", 0.06, 0.13)
    base_r = body_r * draw(rng, params, "base_fraction", 0.55, 1.0)
    base_h = draw(rng, params, "base_height", 0.03, 0.08)
    body_h = draw(rng, params, "body_height", 0.25, 0.5)
    shoulder_h = draw(rng, params, "shoulder_height", 0.04, 0.12)
    neck_r = draw(rng, params, "neck_radius", 0.035, 0.05)
    neck_h = draw(rng, params, "neck_height", 0.05, 0.2)
    z1 = GROUND + base_h
    z2 = z1 + body_h
    z3 = z2 + shoulder_h
    z4 = min(z3 + neck_h, 0.42)
    solids: list[Solid] = [
        Frustum(Part.BASE, (0.0, 0.0, GROUND), (0.0, 0.0, z1), base_r, body_r),
        Cylinder(Part.BODY, (0.0, 0.0, z1), (0.0, 0.0, z2), body_r),
        Frustum(Part.BODY, (0.0, 0.0, z2), (0.0, 0.0, z3), body_r, neck_r),
        Cylinder(Part.LEG, (0.0, 0.0, z3 - 0.01), (0.0, 0.0, z4), neck_r),
        Cylinder(Part.TOP, (0.0, 0.0, z4 - 0.01), (0.0, 0.0, z4 + 0.03), neck_r + 0.01),
    ]
    return Blueprint("bottle", solids, z1, params)
