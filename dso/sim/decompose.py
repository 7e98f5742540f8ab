"""Convex decomposition of meshes with CoACD, cached on disk by content hash.

CoACD takes seconds per mesh, so the same mesh (same bytes, same settings)
is decomposed once; the parts are stored as .npz files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from dso.sim.errors import SimulationError


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dso/coacd``, or ``~/.cache/dso/coacd``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dso" / "coacd"


def _cache_key(vertices: np.ndarray, faces: np.ndarray, threshold: float, seed: int) -> str:
    import coacd

    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(vertices, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(faces, dtype=np.int64).tobytes())
    version = getattr(coacd, "__version__", "unknown")
    digest.update(f"threshold={threshold!r};seed={seed};coacd={version}".encode())
    return digest.hexdigest()


def _read_parts(path: Path) -> list[np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return [data[f"part{i}"] for i in range(int(data["count"]))]
    except Exception:  # missing or corrupt cache entry: recompute
        return None


def _write_parts(path: Path, parts: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"part{i}": p for i, p in enumerate(parts)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, count=np.int64(len(parts)), **arrays)
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def convex_parts(
    vertices: np.ndarray,
    faces: np.ndarray,
    threshold: float,
    seed: int,
    cache_dir: Path | None = None,
) -> list[np.ndarray]:
    """Vertex arrays of the convex parts of a closed mesh (CoACD, seeded and cached)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache / f"{_cache_key(vertices, faces, threshold, seed)}.npz"
    parts = _read_parts(entry)
    if parts is not None:
        return parts
    import coacd

    coacd.set_log_level("error")
    try:
        result = coacd.run_coacd(
            coacd.Mesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int32)),
            threshold=threshold,
            seed=seed,
        )
    except Exception as exc:
        raise SimulationError(f"CoACD convex decomposition failed: {exc}") from exc
    parts = [np.asarray(v, dtype=np.float64) for v, _ in result if len(v) >= 4]
    if not parts:
        raise SimulationError("CoACD returned no convex parts")
    _write_parts(entry, parts)
    return parts
