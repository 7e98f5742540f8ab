"""Cameras looking at the unit cube: where they sit, and how they map world points to pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dso.config import ShapesSettings

MAX_ELEVATION_DEG = 89.0  # a camera straight overhead has no defined "right" direction


@dataclass(frozen=True)
class Camera:
    """A camera on a sphere around ``target``, looking at it, z up.

    ``azimuth`` is measured in degrees from +x towards +y, ``elevation`` in degrees
    above the ground plane. Perspective with a vertical field of view ``fov_deg``, or
    orthographic where ``ortho_scale`` is the half-width of the view in world units.
    """

    azimuth: float
    elevation: float
    distance: float = 2.6
    fov_deg: float = 40.0
    orthographic: bool = False
    ortho_scale: float = 0.9
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if abs(self.elevation) > MAX_ELEVATION_DEG:
            raise ValueError(f"elevation must be within +-{MAX_ELEVATION_DEG} degrees, got {self.elevation}")
        if self.distance <= 0 or not 0 < self.fov_deg < 180 or self.ortho_scale <= 0:
            raise ValueError("camera needs distance > 0, 0 < fov_deg < 180 and ortho_scale > 0")

    @property
    def eye(self) -> np.ndarray:
        az, el = np.deg2rad(self.azimuth), np.deg2rad(self.elevation)
        offset = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        return np.asarray(self.target, dtype=np.float64) + self.distance * offset

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World directions of the image's right, up, and the viewing direction (forward)."""
        forward = np.asarray(self.target, dtype=np.float64) - self.eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
        right /= np.linalg.norm(right)
        return right, np.cross(right, forward), forward

    def project(self, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel column, pixel row (continuous; pixel i spans [i, i + 1)) and a depth key of world points.

        The depth key is smaller for nearer points and varies linearly across the
        image of any plane (-1 / depth for perspective, depth for orthographic), so a
        rasteriser may interpolate it.
        """
        right, up, forward = self.basis()
        rel = np.asarray(points, dtype=np.float64) - self.eye
        xc, yc, zc = rel @ right, rel @ up, rel @ forward
        if self.orthographic:
            scale = np.full_like(zc, self.ortho_scale)
            key = zc
        else:
            zc_safe = np.maximum(zc, 1e-6)
            scale = zc_safe * np.tan(np.deg2rad(self.fov_deg) / 2)
            key = -1.0 / zc_safe
        col = (xc / scale + 1.0) * 0.5 * size
        row = (1.0 - yc / scale) * 0.5 * size
        return col, row, key

    def sees_front_of(self, centers: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Whether faces at ``centers`` with outward ``normals`` face the camera."""
        if self.orthographic:
            return normals @ -self.basis()[2] > 0
        return np.einsum("ij,ij->i", self.eye - centers, normals) > 0


def default_views(n: int, seed: int, settings: ShapesSettings | None = None) -> list[Camera]:
    """``n`` seeded cameras: uniform azimuth and elevation in the configured ranges, whole cube in frame."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    settings = settings or ShapesSettings()
    rng = np.random.default_rng(seed)
    azimuths = rng.uniform(*settings.azimuth_range, size=n)
    elevations = rng.uniform(*settings.elevation_range, size=n)
    return [
        Camera(float(a), float(e), distance=settings.camera_distance, fov_deg=settings.camera_fov_deg)
        for a, e in zip(azimuths, elevations, strict=True)
    ]
