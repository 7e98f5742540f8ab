"""Four-legged animals: long necks, heavy heads, narrow hips, sometimes a raised paw (three-point stance)."""

from __future__ import annotations

import numpy as np

from dso.shapes.families.blueprint import GROUND, Blueprint, draw, pick
from dso.shapes.parts import Part
from dso.shapes.primitives import Capsule, Cylinder, Ellipsoid, Solid

KINDS = ("dog", "horse", "giraffe")


def build(rng: np.random.Generator) -> Blueprint:
    """An animal facing +y standing on its paws."""
    params: dict = {}
    kind = pick(rng, params, "kind", KINDS)
    neck_range = {"dog": (0.06, 0.14), "horse": (0.12, 0.22), "giraffe": (0.22, 0.38)}[kind]
    leg_range = {"dog": (0.1, 0.22), "horse": (0.2, 0.35), "giraffe": (0.25, 0.4)}[kind]
    body_l = draw(rng, params, "body_half_length", 0.14, 0.28)
    body_w = draw(rng, params, "body_half_width", 0.07, 0.13)
    body_h = draw(rng, params, "body_half_height", 0.06, 0.12)
    leg_h = draw(rng, params, "leg_height", *leg_range)
    leg_r = draw(rng, params, "leg_radius", 0.04, 0.06)
    paw_t = draw(rng, params, "paw_thickness", 0.035, 0.05)
    leg_x = draw(rng, params, "leg_spread", 0.3, 0.95) * body_w
    leg_y = draw(rng, params, "leg_reach", 0.5, 0.85) * body_l
    neck_l = draw(rng, params, "neck_length", *neck_range)
    neck_angle = np.deg2rad(draw(rng, params, "neck_angle", 25.0, 80.0))
    head_r = draw(rng, params, "head_radius", 0.05, 0.1)
    tail_l = draw(rng, params, "tail_length", 0.04, 0.2)
    raised = int(rng.integers(4)) if rng.uniform() < 0.35 else -1
    params["raised_leg"] = raised
    lift = draw(rng, params, "paw_lift", 0.04, 0.1)

    body_z = GROUND + paw_t + leg_h + body_h * 0.5
    neck_base = np.array([0.0, body_l * 0.75, body_z + body_h * 0.3])
    head = neck_base + neck_l * np.array([0.0, np.cos(neck_angle), np.sin(neck_angle)])
    head[2] = min(head[2], 0.45 - head_r)
    head[1] = min(head[1], 0.4 - head_r * 1.6)
    solids: list[Solid] = [Ellipsoid(Part.BODY, (0.0, 0.0, body_z), (body_w, body_l, body_h))]
    corners = [(-1, -1), (1, -1), (-1, 1), (1, 1)]
    for index, (sx, sy) in enumerate(corners):
        foot_z = GROUND + (lift if index == raised else 0.0)
        x, y = sx * leg_x, sy * leg_y
        solids.append(Cylinder(Part.BASE, (x, y, foot_z), (x, y, foot_z + paw_t), leg_r * 1.2))
        solids.append(Cylinder(Part.LEG, (x, y, foot_z + paw_t / 2), (x * 0.9, y, body_z), leg_r))
    solids.append(Capsule(Part.BODY, tuple(neck_base), tuple(head), max(0.04, head_r * 0.55)))
    snout = head + np.array([0.0, head_r * draw(rng, params, "snout", 0.6, 1.4), -head_r * 0.3])
    solids.append(Ellipsoid(Part.HEAD, tuple(head), (head_r * 0.85, head_r, head_r * 0.9)))
    solids.append(Capsule(Part.HEAD, tuple(head), tuple(snout), head_r * 0.6))
    tail_base = np.array([0.0, -body_l * 0.9, body_z + body_h * 0.3])
    tail_tip = tail_base + np.array([0.0, -tail_l * 0.7, tail_l * draw(rng, params, "tail_rise", -0.5, 0.8)])
    solids.append(Capsule(Part.DETAIL, tuple(tail_base), tuple(tail_tip), 0.035))
    return Blueprint(kind, solids, GROUND + paw_t, params)
