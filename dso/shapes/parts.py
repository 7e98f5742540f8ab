"""Part labels shared by every family (uint8 values in ``ProceduralObject.parts``; 0 = empty)."""

from __future__ import annotations

from enum import IntEnum


class Part(IntEnum):
    """What a voxel belongs to; the renderer colours each label from a fixed palette."""

    BASE = 1  # feet, paws, stands, base plates: what touches the ground
    LEG = 2  # legs, posts, table / chair legs
    BODY = 3  # torso, trunk, stem, seat, bottle body
    ARM = 4  # arms, lamp arms, side panels
    HEAD = 5  # heads, necks' ends
    TOP = 6  # shades, canopies, caps, sign boards, table tops, backrests
    DETAIL = 7  # tails, beaks, carried things, books


PART_COUNT = len(Part)
