"""Top-heavy objects: mushrooms, signs and umbrellas. Big mass up high on a thin support."""

from __future__ import annotations

import numpy as np

from dso.shapes.families.blueprint import GROUND, Blueprint, draw, pick
from dso.shapes.parts import Part
from dso.shapes.primitives import Box, Cylinder, Ellipsoid, Frustum, Lathe, Solid

KINDS = ("mushroom", "sign", "umbrella")


def build(rng: np.random.Generator) -> Blueprint:
    """A mushroom, sign or umbrella on a small footprint."""
    params: dict = {}
    kind = pick(rng, params, "kind", KINDS)
    return {"mushroom": _mushroom, "sign": _sign, "umbrella": _umbrella}[kind](rng, params)


def _mushroom(rng, params) -> Blueprint:
    stem_h = draw(rng, params, "stem_height", 0.2, 0.55)
    foot_r = draw(rng, params, "stem_foot_radius", 0.05, 0.11)
    stem_r = draw(rng, params, "stem_radius", 0.04, 0.07)
    cap_r = draw(rng, params, "cap_radius", 0.14, 0.32)
    cap_h = draw(rng, params, "cap_height", 0.07, 0.18)
    off = (draw(rng, params, "cap_shift_x", -0.04, 0.04), draw(rng, params, "cap_shift_y", -0.04, 0.04))
    stem_top = GROUND + stem_h
    cap_h = min(cap_h, 0.45 - stem_top)
    solids: list[Solid] = [
        Lathe(Part.BODY, (0.0, 0.0), (GROUND, GROUND + 0.06, stem_top + 0.02), (foot_r, stem_r * 1.1, stem_r)),
        Ellipsoid(Part.TOP, (off[0], off[1], stem_top - 0.01), (cap_r, cap_r, cap_h + 0.01), z_min=stem_top - 0.03),
    ]
    return Blueprint("mushroom", solids, GROUND + 0.04, params)


def _sign(rng, params) -> Blueprint:
    plate = draw(rng, params, "plate_half_size", 0.06, 0.13)
    plate_t = draw(rng, params, "plate_thickness", 0.035, 0.05)
    post = draw(rng, params, "post_radius", 0.035, 0.045)
    top = GROUND + draw(rng, params, "height", 0.5, 0.92)
    board_w = draw(rng, params, "board_half_width", 0.1, 0.3)
    board_h = draw(rng, params, "board_half_height", 0.07, 0.16)
    shift = draw(rng, params, "board_shift", -0.12, 0.12)
    shape = pick(rng, params, "board_shape", ("rect", "round"))
    solids: list[Solid] = [
        Box(Part.BASE, (0.0, 0.0, GROUND + plate_t / 2), (plate, plate, plate_t / 2)),
        Cylinder(Part.LEG, (0.0, 0.0, GROUND + plate_t / 2), (0.0, 0.0, top - board_h), post),
    ]
    center = (shift, 0.0, top - board_h)
    if shape == "rect":
        solids.append(Box(Part.TOP, center, (board_w, 0.025, board_h)))
    else:
        radius = max(board_w, board_h) * 0.8
        center = (shift, 0.0, top - radius)
        solids.append(Cylinder(Part.TOP, (shift, -0.025, top - radius), (shift, 0.025, top - radius), radius))
    if abs(shift) > post:  # a bracket from the post to an off-centre board
        solids.append(Box(Part.ARM, (shift / 2, 0.0, center[2]), (abs(shift) / 2 + post, 0.03, 0.03)))
    return Blueprint("sign", solids, GROUND + plate_t, params)


def _umbrella(rng, params) -> Blueprint:
    stand_r = draw(rng, params, "stand_radius", 0.06, 0.15)
    stand_t = draw(rng, params, "stand_thickness", 0.035, 0.07)
    top = GROUND + draw(rng, params, "height", 0.5, 0.92)
    canopy_r = draw(rng, params, "canopy_radius", 0.18, 0.38)
    canopy_h = draw(rng, params, "canopy_height", 0.06, 0.16)
    dome = pick(rng, params, "canopy_shape", ("cone", "dome")) == "dome"
    solids: list[Solid] = [
        Cylinder(Part.BASE, (0.0, 0.0, GROUND), (0.0, 0.0, GROUND + stand_t), stand_r),
        Cylinder(Part.LEG, (0.0, 0.0, GROUND + stand_t / 2), (0.0, 0.0, top), 0.035),
    ]
    if dome:
        rim = top - canopy_h
        solids.append(Ellipsoid(Part.TOP, (0.0, 0.0, rim), (canopy_r, canopy_r, canopy_h), z_min=rim))
    else:
        solids.append(Frustum(Part.TOP, (0.0, 0.0, top - canopy_h), (0.0, 0.0, top), canopy_r, 0.03))
    solids.append(Cylinder(Part.DETAIL, (0.0, 0.0, top - 0.01), (0.0, 0.0, min(top + 0.04, 0.46)), 0.035))
    return Blueprint("umbrella", solids, GROUND + stand_t, params)
