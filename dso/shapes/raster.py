"""A vectorised z-buffer rasteriser for convex polygons (voxel faces, mesh triangles), numpy only.

Every polygon lists the pixels of its screen bounding box, keeps those whose centre
lies inside all its edges, and writes (depth, polygon index) packed into one int64
with ``np.minimum.at`` so the nearest polygon wins each pixel in a single pass.
"""

from __future__ import annotations

import numpy as np

INDEX_BITS = 24  # low bits of the packed z-buffer hold the polygon index
DEPTH_LEVELS = 2**36  # depth quantisation steps (packed above the index bits, fits int64)
EMPTY = np.iinfo(np.int64).max


def rasterize(cols: np.ndarray, rows: np.ndarray, keys: np.ndarray, size: int) -> np.ndarray:
    """Index of the nearest polygon covering each pixel ((size, size), -1 where none).

    ``cols``, ``rows`` and ``keys`` are (F, V) screen positions and depth keys of F convex
    polygons with V vertices each (smaller key = nearer; linear in screen space).
    """
    cols, rows, keys = (np.asarray(a, dtype=np.float64) for a in (cols, rows, keys))
    face_count, corners = cols.shape
    if face_count >= 2**INDEX_BITS:
        raise ValueError(f"too many polygons for one image: {face_count} >= {2**INDEX_BITS}")
    out = np.full(size * size, EMPTY, dtype=np.int64)
    if face_count == 0:
        return np.full((size, size), -1, dtype=np.int64)

    # Depth plane per polygon from its first three vertices: key = a col + b row + c.
    x0, y0, k0 = cols[:, 0], rows[:, 0], keys[:, 0]
    ex1, ey1, ek1 = cols[:, 1] - x0, rows[:, 1] - y0, keys[:, 1] - k0
    ex2, ey2, ek2 = cols[:, 2] - x0, rows[:, 2] - y0, keys[:, 2] - k0
    det = ex1 * ey2 - ex2 * ey1
    live = np.abs(det) > 1e-12  # drop polygons seen edge-on
    # Pixel-centre bounding boxes, clipped to the image.
    c_lo = np.clip(np.ceil(cols.min(axis=1) - 0.5), 0, size).astype(np.int64)
    c_hi = np.clip(np.floor(cols.max(axis=1) - 0.5), -1, size - 1).astype(np.int64)
    r_lo = np.clip(np.ceil(rows.min(axis=1) - 0.5), 0, size).astype(np.int64)
    r_hi = np.clip(np.floor(rows.max(axis=1) - 0.5), -1, size - 1).astype(np.int64)
    widths = np.where(live, np.maximum(c_hi - c_lo + 1, 0), 0)
    heights = np.where(live, np.maximum(r_hi - r_lo + 1, 0), 0)
    counts = widths * heights
    total = int(counts.sum())
    if total == 0:
        return np.full((size, size), -1, dtype=np.int64)

    face = np.repeat(np.arange(face_count), counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    w = widths[face]
    px = c_lo[face] + local % w
    py = r_lo[face] + local // w
    cx, cy = px + 0.5, py + 0.5

    orientation = np.sign(det)[face]
    inside = np.ones(total, dtype=bool)
    for v in range(corners):
        ax, ay = cols[face, v], rows[face, v]
        bx, by = cols[face, (v + 1) % corners], rows[face, (v + 1) % corners]
        edge = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        inside &= edge * orientation >= 0
    face, px, py, cx, cy = face[inside], px[inside], py[inside], cx[inside], cy[inside]

    dx, dy = cx - x0[face], cy - y0[face]
    inv = 1.0 / det[face]
    u = (dx * ey2[face] - dy * ex2[face]) * inv  # barycentric weights of vertices 1 and 2
    v = (ex1[face] * dy - ey1[face] * dx) * inv
    depth = k0[face] + u * ek1[face] + v * ek2[face]
    if depth.size == 0:
        return np.full((size, size), -1, dtype=np.int64)
    lo, hi = depth.min(), depth.max()
    quantised = ((depth - lo) / max(hi - lo, 1e-12) * (DEPTH_LEVELS - 1)).astype(np.int64)
    np.minimum.at(out, py * size + px, (quantised << INDEX_BITS) | face)
    ids = np.where(out == EMPTY, -1, out & (2**INDEX_BITS - 1))
    return ids.reshape(size, size)
