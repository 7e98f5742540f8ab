"""Furniture: chairs, tables (four legs or a single pedestal), stools and narrow shelves."""

from __future__ import annotations

import numpy as np

from dso.shapes.families.blueprint import GROUND, Blueprint, draw, pick
from dso.shapes.parts import Part
from dso.shapes.primitives import Box, Cylinder, Solid

KINDS = ("chair", "table", "stool", "shelf")

PANEL = 0.025  # half thickness of boards and panels (>= 1.6 voxels across at R = 32)
LEAN_START = 0.04  # legs lean from this height above the ground, so the feet keep their footprint


def build(rng: np.random.Generator) -> Blueprint:
    """A chair, table, stool or shelf standing on the ground."""
    params: dict = {}
    kind = pick(rng, params, "kind", KINDS)
    return {"chair": _chair, "table": _table, "stool": _stool, "shelf": _shelf}[kind](rng, params)


def _legs(half_x: float, half_y: float, top: float, leg: float) -> list[Solid]:
    """Four square legs under the corners of a (2 half_x) x (2 half_y) rectangle."""
    height = top - GROUND
    return [
        Box(Part.LEG, (sx * (half_x - leg), sy * (half_y - leg), GROUND + height / 2), (leg, leg, height / 2))
        for sx in (-1, 1)
        for sy in (-1, 1)
    ]


def _chair(rng, params) -> Blueprint:
    seat_z = GROUND + draw(rng, params, "seat_height", 0.2, 0.42)
    half_w = draw(rng, params, "seat_half_width", 0.12, 0.22)
    half_d = draw(rng, params, "seat_half_depth", 0.12, 0.22)
    leg = draw(rng, params, "leg_half_width", 0.025, 0.035)
    back_h = draw(rng, params, "back_height", 0.18, min(0.45, 0.43 - seat_z))
    back_tilt = draw(rng, params, "back_tilt", 0.0, 0.3)
    solids = _legs(half_w, half_d, seat_z, leg)
    solids.append(Box(Part.BODY, (0.0, 0.0, seat_z), (half_w, half_d, PANEL)))
    back_center = (0.0, -half_d + PANEL - np.sin(back_tilt) * back_h / 2, seat_z + np.cos(back_tilt) * back_h / 2)
    solids.append(Box(Part.TOP, back_center, (half_w, PANEL, back_h / 2 + PANEL), pitch=back_tilt))
    return Blueprint("chair", solids, GROUND + LEAN_START, params)


def _table(rng, params) -> Blueprint:
    top_z = GROUND + draw(rng, params, "height", 0.3, 0.65)
    round_top = pick(rng, params, "top_shape", ("round", "square")) == "round"
    half = draw(rng, params, "top_half_size", 0.15, 0.36)
    half_y = half * draw(rng, params, "aspect", 0.6, 1.0)
    pedestal = pick(rng, params, "support", ("legs", "pedestal")) == "pedestal"
    solids: list[Solid] = []
    if round_top:
        solids.append(Cylinder(Part.TOP, (0.0, 0.0, top_z - PANEL), (0.0, 0.0, top_z + PANEL), half))
    else:
        solids.append(Box(Part.TOP, (0.0, 0.0, top_z), (half, half_y, PANEL)))
    if pedestal:
        foot_r = draw(rng, params, "foot_radius", 0.07, 0.16)
        foot_t = draw(rng, params, "foot_thickness", 0.035, 0.06)
        solids.append(Cylinder(Part.BASE, (0.0, 0.0, GROUND), (0.0, 0.0, GROUND + foot_t), foot_r))
        column_r = draw(rng, params, "column_radius", 0.035, 0.06)
        solids.append(Cylinder(Part.LEG, (0.0, 0.0, GROUND + foot_t / 2), (0.0, 0.0, top_z), column_r))
        return Blueprint("table", solids, GROUND + foot_t, params)
    leg = draw(rng, params, "leg_half_width", 0.025, 0.04)
    inset = 0.7 if round_top else 1.0
    solids.extend(_legs(half * inset, (half if round_top else half_y) * inset, top_z, leg))
    return Blueprint("table", solids, GROUND + LEAN_START, params)


def _stool(rng, params) -> Blueprint:
    seat_z = GROUND + draw(rng, params, "height", 0.22, 0.6)
    seat_r = draw(rng, params, "seat_radius", 0.1, 0.2)
    splay = draw(rng, params, "splay", 0.9, 1.4)
    count = int(rng.integers(3, 5))
    params["legs"] = count
    leg_r = draw(rng, params, "leg_radius", 0.03, 0.042)
    turn = draw(rng, params, "turn", 0.0, 2 * np.pi)
    solids: list[Solid] = [Cylinder(Part.TOP, (0.0, 0.0, seat_z - PANEL), (0.0, 0.0, seat_z + PANEL), seat_r)]
    for k in range(count):
        angle = turn + 2 * np.pi * k / count
        foot = np.array([np.cos(angle), np.sin(angle)]) * (seat_r * 0.7 * splay)
        head = np.array([np.cos(angle), np.sin(angle)]) * (seat_r * 0.7)
        solids.append(Cylinder(Part.LEG, (foot[0], foot[1], GROUND), (head[0], head[1], seat_z), leg_r))
    return Blueprint("stool", solids, GROUND + LEAN_START, params)


def _shelf(rng, params) -> Blueprint:
    height = draw(rng, params, "height", 0.45, 0.92)
    half_w = draw(rng, params, "half_width", 0.12, 0.3)
    half_d = draw(rng, params, "half_depth", 0.05, 0.11)
    boards = int(rng.integers(2, 6))
    params["boards"] = boards
    top = GROUND + height
    solids: list[Solid] = []
    for sx in (-1, 1):
        solids.append(Box(Part.ARM, (sx * (half_w - PANEL), 0.0, GROUND + height / 2), (PANEL, half_d, height / 2)))
    for k in range(boards):
        z = GROUND + PANEL + (height - 2 * PANEL) * k / (boards - 1)
        solids.append(Box(Part.BODY, (0.0, 0.0, z), (half_w, half_d, PANEL)))
    if rng.uniform() < 0.5:  # things stored on the top board, off to one side
        load = draw(rng, params, "load_half_size", 0.04, 0.08)
        side = draw(rng, params, "load_side", -1.0, 1.0) * (half_w - load)
        load_top = min(top + 2 * load, 0.45)
        half = (load, half_d * 0.8, (load_top - top) / 2 + PANEL)
        solids.append(Box(Part.DETAIL, (side, 0.0, (top + load_top) / 2), half))
    return Blueprint("shelf", solids, GROUND + LEAN_START, params)
