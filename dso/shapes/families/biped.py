"""Two-legged figures: humanoids, boxy robots and birds. Narrow stance, tall body: easy to tip."""

from __future__ import annotations

import numpy as np

from dso.shapes.families.blueprint import GROUND, Blueprint, draw, pick
from dso.shapes.parts import Part
from dso.shapes.primitives import Box, Capsule, Cylinder, Ellipsoid, Frustum, Solid

KINDS = ("humanoid", "robot", "bird")


def build(rng: np.random.Generator) -> Blueprint:
    """A biped facing +y, feet on the ground, of a randomly chosen kind."""
    params: dict = {}
    kind = pick(rng, params, "kind", KINDS)
    return {"humanoid": _humanoid, "robot": _robot, "bird": _bird}[kind](rng, params)


def _arm_end(rng, params, side: int, shoulder: np.ndarray, length: float) -> np.ndarray:
    """Hand position for one arm pose (down, forward, out or raised)."""
    pose = pick(rng, params, f"arm_pose_{side:+d}", ("down", "down", "forward", "out", "up"))
    angle = np.deg2rad(draw(rng, params, f"arm_angle_{side:+d}", -35.0, 25.0))
    if pose == "down":
        offset = np.array([side * length * 0.2, 0.05 * length, -length])
    elif pose == "forward":
        offset = np.array([0.0, length * np.cos(angle), length * np.sin(angle)])
    elif pose == "out":
        offset = np.array([side * length * np.cos(angle), 0.0, length * np.sin(angle)])
    else:
        offset = np.array([side * length * 0.3, 0.0, length * 0.9])
    return shoulder + offset


def _humanoid(rng, params) -> Blueprint:
    height = draw(rng, params, "height", 0.6, 0.9)
    foot_t = draw(rng, params, "foot_thickness", 0.04, 0.06)
    foot_l = draw(rng, params, "foot_length", 0.09, 0.2)
    foot_w = draw(rng, params, "foot_width", 0.065, 0.1)
    stance = draw(rng, params, "stance", foot_w / 2 + 0.015, 0.15)
    leg_r = draw(rng, params, "leg_radius", 0.04, 0.065)
    hip_x = draw(rng, params, "hip_half_width", 0.045, 0.09)
    hip_z = GROUND + height * draw(rng, params, "leg_fraction", 0.38, 0.5)
    torso_h = height * draw(rng, params, "torso_fraction", 0.24, 0.32)
    torso_w = draw(rng, params, "torso_width", 0.14, 0.28)
    torso_d = draw(rng, params, "torso_depth", 0.08, 0.15)
    torso_shift = draw(rng, params, "torso_forward", -0.03, 0.06)
    head_r = draw(rng, params, "head_radius", 0.05, 0.11)
    arm_r = draw(rng, params, "arm_radius", 0.035, 0.05)
    arm_l = height * draw(rng, params, "arm_fraction", 0.22, 0.38)
    toe = draw(rng, params, "toe_forward", -0.01, 0.05)

    shoulder_z = hip_z + torso_h
    head_z = min(shoulder_z + 0.6 * head_r + 0.02, 0.45 - head_r)
    solids: list[Solid] = [Box(Part.BODY, (0.0, 0.0, hip_z), (hip_x + leg_r, torso_d / 2, leg_r))]
    for side in (-1, 1):
        solids.append(Box(Part.BASE, (side * stance, toe, GROUND + foot_t / 2), (foot_w / 2, foot_l / 2, foot_t / 2)))
        solids.append(Cylinder(Part.LEG, (side * stance, 0.0, GROUND + foot_t / 2), (side * hip_x, 0.0, hip_z), leg_r))
        shoulder = np.array([side * (torso_w / 2 + arm_r * 0.6), torso_shift, shoulder_z - arm_r])
        hand = _arm_end(rng, params, side, shoulder, arm_l)
        hand[2] = max(hand[2], GROUND + foot_t + 0.1)
        solids.append(Capsule(Part.ARM, tuple(shoulder), tuple(hand), arm_r))
        if side == 1 and rng.uniform() < 0.3:
            params["carried_radius"] = carried = float(rng.uniform(0.04, 0.08))
            solids.append(Ellipsoid(Part.DETAIL, tuple(hand), (carried, carried, carried)))
    rounded = pick(rng, params, "torso_shape", ("box", "round")) == "round"
    torso_center = (0.0, torso_shift, hip_z + torso_h / 2)
    if rounded:
        solids.append(Ellipsoid(Part.BODY, torso_center, (torso_w / 2, torso_d / 2, torso_h / 2 + 0.02)))
    else:
        solids.append(Box(Part.BODY, torso_center, (torso_w / 2, torso_d / 2, torso_h / 2)))
    solids.append(Cylinder(Part.BODY, (0.0, torso_shift, shoulder_z - 0.02), (0.0, torso_shift, head_z), 0.04))
    solids.append(Ellipsoid(Part.HEAD, (0.0, torso_shift, head_z), (head_r, head_r, head_r)))
    return Blueprint("humanoid", solids, GROUND + foot_t, params)


def _robot(rng, params) -> Blueprint:
    height = draw(rng, params, "height", 0.6, 0.9)
    foot_t = draw(rng, params, "foot_thickness", 0.04, 0.07)
    foot_l = draw(rng, params, "foot_length", 0.1, 0.2)
    foot_w = draw(rng, params, "foot_width", 0.07, 0.12)
    stance = draw(rng, params, "stance", foot_w / 2 + 0.02, 0.16)
    leg_w = draw(rng, params, "leg_half_width", 0.025, 0.045)
    hip_z = GROUND + height * draw(rng, params, "leg_fraction", 0.35, 0.5)
    torso_h = height * draw(rng, params, "torso_fraction", 0.25, 0.35)
    hips = max(stance + leg_w, 0.08)
    torso_w = draw(rng, params, "torso_half_width", hips, hips + 0.08)
    torso_d = draw(rng, params, "torso_half_depth", 0.05, 0.1)
    head = draw(rng, params, "head_half_size", 0.05, 0.1)
    arm_w = draw(rng, params, "arm_half_width", 0.025, 0.035)
    arm_l = height * draw(rng, params, "arm_fraction", 0.2, 0.35)
    arm_pitch = draw(rng, params, "arm_pitch", 0.0, 1.6)  # 0 = hanging, pi/2 = straight forward
    top = torso_h + hip_z
    head_z = min(top + head, 0.45 - head)
    solids: list[Solid] = [
        Box(Part.BODY, (0.0, 0.0, hip_z + torso_h / 2), (torso_w, torso_d, torso_h / 2)),
        Box(Part.HEAD, (0.0, 0.0, head_z), (head, head * 0.9, head)),
        Cylinder(Part.DETAIL, (0.0, 0.0, head_z + head * 0.9), (0.0, 0.0, min(head_z + head + 0.05, 0.45)), 0.035),
    ]
    for side in (-1, 1):
        solids.append(Box(Part.BASE, (side * stance, 0.02, GROUND + foot_t / 2), (foot_w / 2, foot_l / 2, foot_t / 2)))
        leg_h = hip_z + 0.02 - (GROUND + foot_t / 2)
        solids.append(Box(Part.LEG, (side * stance, 0.0, GROUND + foot_t / 2 + leg_h / 2), (leg_w, leg_w, leg_h / 2)))
        shoulder = np.array([side * (torso_w + arm_w), 0.0, top - arm_w])
        reach = np.array([0.0, np.sin(arm_pitch), -np.cos(arm_pitch)]) * arm_l
        center = shoulder + reach / 2
        solids.append(Box(Part.ARM, tuple(center), (arm_w, arm_w, arm_l / 2 + arm_w), pitch=arm_pitch))
    return Blueprint("robot", solids, GROUND + foot_t, params)


def _bird(rng, params) -> Blueprint:
    foot_t = draw(rng, params, "foot_thickness", 0.04, 0.055)
    toe_l = draw(rng, params, "toe_length", 0.1, 0.2)
    stance = draw(rng, params, "stance", 0.04, 0.09)
    leg_r = draw(rng, params, "leg_radius", 0.035, 0.05)
    leg_h = draw(rng, params, "leg_height", 0.12, 0.35)
    body = (
        draw(rng, params, "body_half_width", 0.08, 0.14),
        draw(rng, params, "body_half_length", 0.13, 0.25),
        draw(rng, params, "body_half_height", 0.08, 0.14),
    )
    body_y = draw(rng, params, "body_forward", -0.06, 0.06)
    neck_l = draw(rng, params, "neck_length", 0.06, 0.25)
    head_r = draw(rng, params, "head_radius", 0.045, 0.08)
    tail_l = draw(rng, params, "tail_length", 0.05, 0.18)
    body_z = GROUND + foot_t + leg_h + body[2] * 0.6
    neck_base = np.array([0.0, body_y + body[1] * 0.6, body_z + body[2] * 0.5])
    head = neck_base + np.array([0.0, 0.35 * neck_l, neck_l])
    head[2] = min(head[2], 0.45 - head_r)
    solids: list[Solid] = [Ellipsoid(Part.BODY, (0.0, body_y, body_z), body)]
    for side in (-1, 1):
        solids.append(Box(Part.BASE, (side * stance, toe_l * 0.3, GROUND + foot_t / 2), (0.04, toe_l / 2, foot_t / 2)))
        ankle, hip = (side * stance, 0.0, GROUND + foot_t / 2), (side * stance * 0.7, body_y, body_z)
        solids.append(Cylinder(Part.LEG, ankle, hip, leg_r))
    solids.append(Capsule(Part.BODY, tuple(neck_base), tuple(head), max(0.04, head_r * 0.6)))
    solids.append(Ellipsoid(Part.HEAD, tuple(head), (head_r, head_r, head_r)))
    beak_tip = head + np.array([0.0, head_r + draw(rng, params, "beak_length", 0.03, 0.09), -0.01])
    solids.append(Frustum(Part.DETAIL, tuple(head), tuple(beak_tip), 0.035, 0.02))
    tail_start = np.array([0.0, body_y - body[1] * 0.8, body_z])
    tail_end = tail_start + np.array([0.0, -tail_l, draw(rng, params, "tail_rise", -0.03, 0.12)])
    solids.append(Capsule(Part.DETAIL, tuple(tail_start), tuple(tail_end), 0.04))
    return Blueprint("bird", solids, GROUND + foot_t, params)
