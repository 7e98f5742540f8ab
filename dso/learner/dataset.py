"""The offline dataset: the generator's own samples on training prompts, labelled by the oracle.

Layout of a dataset folder (all arrays numpy, no pickles):

    index.json        spec (what the dataset is) + one entry per finished chunk
    chunk_00000.npz   one chunk of prompts: their condition tokens (once per prompt,
                      not per sample) and, per sample, latent x0, packed occupancy,
                      verdict fields, prompt row, view seed, adapter version and seed

A chunk is the unit of resume: it is written to a temp file and renamed, then the
index is rewritten the same way, so an interrupted build restarts at the first
missing chunk. Every sample's content depends only on its prompt and seed, so a
resumed build equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dso.config import DatasetSettings, ShapesSettings, SimSettings
from dso.models.contract import ShapeSampler
from dso.shapes.prompts import Prompt, training_prompt
from dso.sim.batch import label_batch
from dso.sim.verdict import Outcome, SimStatus, Verdict

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
TRAINABLE_STATUSES = (SimStatus.ok.value, SimStatus.invalid_input.value)  # invalid (e.g. empty) output = unstable


class DatasetMismatchError(ValueError):
    """The folder already holds a dataset built with a different spec."""


SampleSource = ShapeSampler  # what the builder needs from a generator: the contract's encode / sample / decode


@dataclass(frozen=True)
class PromptRef:
    """Which training prompt: object seed and view seed (``training_prompt`` arguments)."""

    index: int  # position in the dataset
    object_seed: int
    view_seed: int


def plan_prompts(settings: DatasetSettings) -> list[PromptRef]:
    """Prompt p = (object j, view v): object seed ``object_seed_start + j``, view seed ``view_seed_start + p``."""
    refs = []
    for j in range(settings.objects):
        for v in range(settings.views_per_object):
            p = j * settings.views_per_object + v
            refs.append(PromptRef(p, settings.object_seed_start + j, settings.view_seed_start + p))
    return refs


def dataset_spec(settings: DatasetSettings, adapter_version: int, model_id: str) -> dict:
    """The identity of a dataset: a resumed build must match it exactly."""
    keys = ("objects", "views_per_object", "samples_per_prompt", "object_seed_start", "view_seed_start", "sample_seed_start", "chunk_prompts")
    spec = {k: getattr(settings, k) for k in keys}
    spec.update(format=FORMAT_VERSION, adapter_version=int(adapter_version), model=model_id)
    return spec


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=1)))


def _chunk_name(i: int) -> str:
    return f"chunk_{i:05d}.npz"


def read_index(root: Path) -> dict | None:
    path = Path(root) / INDEX_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _verdict_arrays(verdicts: Sequence[Verdict]) -> dict[str, np.ndarray]:
    nan = float("nan")
    return {
        "status": np.array([v.status.value for v in verdicts]),
        "stable": np.array([v.outcome == Outcome.stable for v in verdicts], dtype=bool),
        "tilt_deg": np.array([nan if v.tilt_deg is None else v.tilt_deg for v in verdicts], dtype=np.float32),
        "rotation_deg": np.array([nan if v.rotation_deg is None else v.rotation_deg for v in verdicts], dtype=np.float32),
    }


def build_chunk(
    source: SampleSource,
    prompts: Sequence[PromptRef],
    settings: DatasetSettings,
    shapes: ShapesSettings,
    sim: SimSettings,
    adapter_version: int,
) -> dict[str, np.ndarray]:
    """Generate K samples for each prompt of one chunk, label them, and return the chunk's arrays."""
    k = settings.samples_per_prompt
    images = [training_prompt(p.object_seed, p.view_seed, shapes) for p in prompts]
    cond = source.encode([Image.fromarray(pr.image, "RGBA") for pr in images])  # [P, L, D], once per prompt
    seeds = [settings.sample_seed_start + p.index * k + j for p in prompts for j in range(k)]
    latents = source.sample_latents(cond.repeat_interleave(k, dim=0), seeds)
    occupancy = source.decode(latents)
    verdicts = label_batch(list(occupancy), sim, workers=settings.sim_workers)
    rows = np.repeat(np.arange(len(prompts)), k)
    return {
        "prompt_id": np.array([pr.prompt_id for pr in images]),
        "prompt_index": np.array([p.index for p in prompts], dtype=np.int64),
        "cond": cond.float().cpu().numpy(),
        "latent": latents.float().cpu().numpy(),
        "occupancy_bits": np.packbits(occupancy.reshape(len(seeds), -1), axis=1),
        "grid_size": np.array(occupancy.shape[1], dtype=np.int64),
        "prompt_row": rows.astype(np.int64),
        "seed": np.array(seeds, dtype=np.int64),
        "object_seed": np.array([prompts[r].object_seed for r in rows], dtype=np.int64),
        "view_seed": np.array([prompts[r].view_seed for r in rows], dtype=np.int64),
        "adapter_version": np.full(len(seeds), adapter_version, dtype=np.int64),
        **_verdict_arrays(verdicts),
    }


def build_dataset(
    source: SampleSource,
    root: Path,
    settings: DatasetSettings,
    shapes: ShapesSettings,
    sim: SimSettings,
    adapter_version: int = 0,
    model_id: str = "",
    on_chunk: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Build (or finish) the dataset in ``root``; returns the index. ``on_chunk(done, total, entry)`` reports progress."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    spec = dataset_spec(settings, adapter_version, model_id)
    index = read_index(root) or {"spec": spec, "chunks": []}
    if index["spec"] != spec:
        diff = {k: (index["spec"].get(k), v) for k, v in spec.items() if index["spec"].get(k) != v}
        raise DatasetMismatchError(f"{root} holds a dataset with another spec (existing, requested): {diff}; use a new folder")
    prompts = plan_prompts(settings)
    chunks = [prompts[i : i + settings.chunk_prompts] for i in range(0, len(prompts), settings.chunk_prompts)]
    done = {c["chunk"] for c in index["chunks"] if (root / c["file"]).is_file()}
    index["chunks"] = [c for c in index["chunks"] if c["chunk"] in done]
    for i, chunk in enumerate(chunks):
        if i in done:
            continue
        arrays = build_chunk(source, chunk, settings, shapes, sim, adapter_version)
        _write_atomic(root / _chunk_name(i), lambda p, a=arrays: _savez(p, a))
        entry = {
            "chunk": i,
            "file": _chunk_name(i),
            "prompts": len(chunk),
            "samples": int(len(arrays["seed"])),
            "stable": int(arrays["stable"].sum()),
            "trainable": int(np.isin(arrays["status"], TRAINABLE_STATUSES).sum()),
        }
        index["chunks"] = sorted(index["chunks"] + [entry], key=lambda c: c["chunk"])
        _write_json(root / INDEX_FILE, index)
        if on_chunk is not None:
            on_chunk(len(index["chunks"]), len(chunks), entry)
    index["complete"] = len(index["chunks"]) == len(chunks)
    _write_json(root / INDEX_FILE, index)
    return index


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:  # a file handle keeps numpy from appending ".npz" to the temp name
        np.savez(fh, **arrays)


@dataclass
class OfflineDataset:
    """A whole dataset in memory: condition tokens per prompt, everything else per sample."""

    cond: torch.Tensor  # [P, L, D]
    prompt_ids: list[str]  # [P]
    x0: torch.Tensor  # [N, C, R, R, R]
    prompt_row: np.ndarray  # [N] -> row of cond
    stable: np.ndarray  # [N] bool
    status: np.ndarray  # [N] str
    tilt_deg: np.ndarray
    rotation_deg: np.ndarray
    seed: np.ndarray
    view_seed: np.ndarray
    adapter_version: np.ndarray
    occupancy_bits: np.ndarray  # [N, ceil(R^3 / 8)] packed
    resolution: int
    spec: dict

    @classmethod
    def load(cls, root: Path) -> "OfflineDataset":
        root = Path(root)
        index = read_index(root)
        if index is None or not index["chunks"]:
            raise FileNotFoundError(f"{root} holds no dataset chunks (run `dso dataset build` first)")
        parts = []
        for entry in index["chunks"]:
            with np.load(root / entry["file"], allow_pickle=False) as z:
                parts.append({k: z[k] for k in z.files})
        offsets = np.cumsum([0] + [len(p["prompt_id"]) for p in parts[:-1]])
        cat = lambda k: np.concatenate([p[k] for p in parts])  # noqa: E731
        latent = cat("latent")
        return cls(
            cond=torch.from_numpy(cat("cond")),
            prompt_ids=[str(s) for s in cat("prompt_id")],
            x0=torch.from_numpy(latent),
            prompt_row=np.concatenate([p["prompt_row"] + off for p, off in zip(parts, offsets)]),
            stable=cat("stable"),
            status=cat("status"),
            tilt_deg=cat("tilt_deg"),
            rotation_deg=cat("rotation_deg"),
            seed=cat("seed"),
            view_seed=cat("view_seed"),
            adapter_version=cat("adapter_version"),
            occupancy_bits=cat("occupancy_bits"),
            resolution=int(parts[0]["grid_size"]),
            spec=index["spec"],
        )

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    @property
    def trainable(self) -> np.ndarray:
        """Samples with a meaningful label (sim errors and timeouts are left out)."""
        return np.isin(self.status, TRAINABLE_STATUSES)

    def stable_rows(self) -> np.ndarray:
        return np.flatnonzero(self.stable & self.trainable)

    def unstable_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.stable & self.trainable)

    def pair_groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per prompt with both outcomes: (stable rows, unstable rows) — the DPO pair pool."""
        groups = []
        ok = self.trainable
        for row in range(len(self.prompt_ids)):
            mine = (self.prompt_row == row) & ok
            s, u = np.flatnonzero(mine & self.stable), np.flatnonzero(mine & ~self.stable)
            if len(s) and len(u):
                groups.append((s, u))
        return groups

    def occupancy(self, i: int) -> np.ndarray:
        n = self.resolution
        return np.unpackbits(self.occupancy_bits[i], count=n**3).astype(bool).reshape(n, n, n)

    def summary(self) -> dict:
        ok = self.trainable
        return {
            "prompts": len(self.prompt_ids),
            "samples": len(self),
            "trainable": int(ok.sum()),
            "stable": int((self.stable & ok).sum()),
            "stable_fraction": float(self.stable[ok].mean()) if ok.any() else float("nan"),
            "pair_prompts": len(self.pair_groups()),
        }


def prompts_for(settings: DatasetSettings, shapes: ShapesSettings) -> list[Prompt]:
    """The dataset's prompt images (for pictures and checks; the builder renders per chunk)."""
    return [training_prompt(p.object_seed, p.view_seed, shapes) for p in plan_prompts(settings)]
