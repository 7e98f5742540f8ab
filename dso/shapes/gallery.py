"""Draw a picture of the procedural families: ``python -m dso.shapes.gallery [--out docs/shapes.png]``.

One row per family, ``per_family`` objects per row, each from two views.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dso.config import ShapesSettings
from dso.shapes.procedural import FAMILIES, family_of_seed, sample_object
from dso.shapes.render import Camera, render_occupancy

BACKGROUND = (255, 255, 255, 255)
LABEL_COLOR = (40, 40, 40, 255)
LABEL_HEIGHT = 14  # pixels under each object for its kind and margin


def family_seeds(
    family: str, count: int, settings: ShapesSettings, resolution: int = 64, search: int = 400
) -> list[int]:
    """``count`` seeds whose family-less draw lands in ``family``, showing as many different kinds as possible."""
    seeds = [seed for seed in range(search) if family_of_seed(seed, settings) == family]
    chosen, kinds = [], set()
    for seed in seeds:
        kind = sample_object(seed, resolution=resolution, settings=settings).kind
        if kind not in kinds:
            chosen.append(seed)
            kinds.add(kind)
        if len(chosen) == count:
            return chosen
    return (chosen + [s for s in seeds if s not in chosen])[:count]


def gallery(
    per_family: int = 4, size: int = 160, resolution: int = 64, views: tuple[float, float] = (30.0, 120.0)
) -> Image.Image:
    """A sheet: rows = families, columns = objects x two azimuths (degrees) at 20 degrees elevation."""
    settings = ShapesSettings()
    cell_w, cell_h = size, size + LABEL_HEIGHT
    sheet = Image.new("RGBA", (cell_w * per_family * len(views), cell_h * len(FAMILIES)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for row, family in enumerate(FAMILIES):
        for k, seed in enumerate(family_seeds(family, per_family, settings, resolution)):
            obj = sample_object(seed, resolution=resolution, family=None, settings=settings)
            for v, azimuth in enumerate(views):
                camera = Camera(azimuth, 20.0, distance=settings.camera_distance, fov_deg=settings.camera_fov_deg)
                rgba = render_occupancy(obj.occupancy, camera, size=size, parts=obj.parts, settings=settings)
                x, y = (k * len(views) + v) * cell_w, row * cell_h
                sheet.alpha_composite(Image.fromarray(rgba, mode="RGBA"), (x, y))
                if v == 0:
                    draw.text((x + 4, y + size), f"{obj.kind} #{seed}  margin {obj.margin:.3f}", fill=LABEL_COLOR)
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/shapes.png"))
    parser.add_argument("--per-family", type=int, default=4)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image = gallery(per_family=args.per_family, size=args.size)
    image.convert("RGB").save(args.out)
    print(f"wrote {args.out} ({image.width}x{image.height}); {np.prod(image.size)} pixels")


if __name__ == "__main__":
    main()
