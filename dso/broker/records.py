"""Records that travel through the broker, with a compact binary encoding.

A sample is the generator's latent (float16, of the generator's declared
``latent_shape``: [C, R, R, R] for TRELLIS stage 1; the header carries the shape,
so any layout fits) plus what the oracle judges: its decoded occupancy (bool,
[R, R, R], bit-packed; about 96 KB at TRELLIS size), or the mesh a mesh-emitting
generator made (float32 vertices (V, 3) + int32 faces (F, 3), z up, the oracle's
mesh frame), or both. Records without a mesh encode exactly as before the mesh
existed, so old records stay readable. Encoding is a tiny
JSON header plus raw numpy bytes, never pickle, so any process (or language)
can read it and a malicious payload cannot execute code.

Layout: ``MAGIC | u32 header length (little endian) | header JSON | array bytes``.
The header names each array's dtype, shape, offset and byte length.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import InitVar
from typing import Any

import numpy as np
import trimesh

from dso.sim.verdict import Outcome, Verdict  # the oracle's own verdict type, kept unchanged (dso.sim.contract)

MAGIC = b"DSOR"
FORMAT_VERSION = 1
_LEN = struct.Struct("<I")

class RecordDecodeError(ValueError):
    """Bytes that are not a valid encoded record (wrong magic, truncated, bad header)."""


def new_sample_id() -> str:
    """A fresh unique sample id (uuid4 hex)."""
    return uuid.uuid4().hex


def _verdict_from_header(data: Mapping[str, Any]) -> Verdict:
    """The verdict stored in a labelled record's header (records written before the broker kept the
    oracle's own ``Verdict`` named its wall time ``sim_seconds`` and carried no other fields)."""
    data = dict(data)
    if "sim_seconds" in data:
        data.setdefault("elapsed_s", data.pop("sim_seconds"))
    return Verdict.model_validate(data)


def _as_float16_latent(latent: np.ndarray) -> np.ndarray:
    arr = np.asarray(latent)
    if arr.ndim == 0:
        raise ValueError(f"latent must be an array of the generator's latent_shape, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"latent must be a floating array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float16)


def _as_bool_occupancy(occupancy: np.ndarray) -> np.ndarray:
    arr = np.asarray(occupancy)
    if arr.ndim != 3:
        raise ValueError(f"occupancy must have shape (R, R, R), got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) and np.isin(arr, (0, 1)).all()):
            raise ValueError(f"occupancy must be boolean (or 0/1 integers), got dtype {arr.dtype}")
        arr = arr.astype(np.bool_)
    return np.ascontiguousarray(arr)


@dataclass(frozen=True, eq=False)
class SampleMesh:
    """A generator's triangle mesh as a record carries it: float32 vertices (V, 3), int32 faces (F, 3), z up.

    Checked when made, so a broken mesh fails in the generator that made it, not later in a simulator:
    finite vertices, at least one face, every face index naming a vertex, and (``max_faces``, pass
    ``sim.max_faces``) no more faces than the oracle accepts, which also bounds the record's size.
    """

    vertices: np.ndarray
    faces: np.ndarray
    max_faces: InitVar[int | None] = None

    def __post_init__(self, max_faces: int | None) -> None:
        vertices, faces = np.asarray(self.vertices), np.asarray(self.faces)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
            raise ValueError(f"mesh vertices must have shape (V, 3) with V > 0, got {vertices.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
            raise ValueError(f"mesh faces must have shape (F, 3) with F > 0, got {faces.shape}")
        if not np.issubdtype(vertices.dtype, np.floating) and not np.issubdtype(vertices.dtype, np.integer):
            raise ValueError(f"mesh vertices must be numbers, got dtype {vertices.dtype}")
        if not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"mesh faces must be integer vertex indices, got dtype {faces.dtype}")
        if max_faces is not None and len(faces) > max_faces:
            raise ValueError(f"mesh has {len(faces)} faces, more than max_faces={max_faces} (sim.max_faces)")
        with np.errstate(over="ignore"):  # a coordinate beyond float32's range becomes inf, refused just below
            vertices = np.ascontiguousarray(vertices, dtype=np.float32)
        if not np.isfinite(vertices).all():
            raise ValueError("mesh vertices hold NaN or infinite coordinates (after conversion to float32)")
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise ValueError(
                f"mesh faces index vertices outside [0, {len(vertices)}): min {faces.min()}, max {faces.max()}"
            )
        object.__setattr__(self, "vertices", vertices)
        object.__setattr__(self, "faces", np.ascontiguousarray(faces, dtype=np.int32))

    @classmethod
    def from_trimesh(cls, mesh: trimesh.Trimesh, max_faces: int | None = None) -> SampleMesh:
        return cls(np.asarray(mesh.vertices), np.asarray(mesh.faces), max_faces=max_faces)

    def to_trimesh(self) -> trimesh.Trimesh:
        """The mesh as the generator made it (no merging or repair: the oracle does what it needs)."""
        return trimesh.Trimesh(vertices=self.vertices.astype(float), faces=self.faces.astype(np.int64), process=False)


@dataclass(frozen=True, eq=False)
class SampleRecord:
    """One generated sample, tagged with the adapter version that made it."""

    prompt_id: str
    view: int
    adapter_version: int
    seed: int
    latent: np.ndarray  # float16, the generator's latent_shape ([C, R, R, R] for TRELLIS stage 1)
    occupancy: np.ndarray | None = None  # bool (R, R, R); None for a mesh-only sample
    mesh: SampleMesh | None = None  # a mesh-emitting generator's mesh (a trimesh.Trimesh is converted)
    generation_seconds: float = 0.0
    sample_id: str = field(default_factory=new_sample_id)
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.sample_id or not isinstance(self.sample_id, str):
            raise ValueError("sample_id must be a non-empty string")
        if not self.prompt_id:
            raise ValueError("prompt_id must be a non-empty string")
        if self.adapter_version < 0:
            raise ValueError(f"adapter_version must be >= 0, got {self.adapter_version}")
        object.__setattr__(self, "latent", _as_float16_latent(self.latent))
        if self.occupancy is None and self.mesh is None:
            raise ValueError("a sample needs an occupancy grid, a mesh, or both; got neither")
        if self.occupancy is not None:
            object.__setattr__(self, "occupancy", _as_bool_occupancy(self.occupancy))
        if isinstance(self.mesh, trimesh.Trimesh):
            object.__setattr__(self, "mesh", SampleMesh.from_trimesh(self.mesh))
        elif self.mesh is not None and not isinstance(self.mesh, SampleMesh):
            raise ValueError(f"mesh must be a SampleMesh or a trimesh.Trimesh, got {type(self.mesh).__name__}")

    def oracle_input(self) -> np.ndarray | trimesh.Trimesh:
        """What the oracle judges (dso.sim.contract): the generator's own mesh when it made one, else the grid."""
        if self.mesh is not None:
            return self.mesh.to_trimesh()
        assert self.occupancy is not None  # __post_init__: one of the two is there
        return self.occupancy

    def header(self) -> dict[str, Any]:
        """The scalar fields, JSON-ready."""
        return {
            "sample_id": self.sample_id,
            "prompt_id": self.prompt_id,
            "view": int(self.view),
            "adapter_version": int(self.adapter_version),
            "seed": int(self.seed),
            "created_at": float(self.created_at),
            "generation_seconds": float(self.generation_seconds),
        }

    def to_bytes(self) -> bytes:
        return _encode("sample", self.header(), self.latent, self.occupancy, self.mesh)

    @classmethod
    def from_bytes(cls, data: bytes) -> SampleRecord:
        kind, header, arrays = _decode(data)
        if kind != "sample":
            raise RecordDecodeError(f"expected a sample record, got {kind!r}")
        return cls._from_parts(header, arrays)

    @classmethod
    def _from_parts(cls, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> SampleRecord:
        try:
            mesh = None
            if "mesh_vertices" in arrays or "mesh_faces" in arrays:
                mesh = SampleMesh(arrays["mesh_vertices"], arrays["mesh_faces"])
        except KeyError as exc:
            raise RecordDecodeError(f"record has half a mesh: no {exc}") from exc
        except ValueError as exc:
            raise RecordDecodeError(f"record holds a malformed mesh: {exc}") from exc
        try:
            return cls(
                sample_id=header["sample_id"],
                prompt_id=header["prompt_id"],
                view=header["view"],
                adapter_version=header["adapter_version"],
                seed=header["seed"],
                created_at=header["created_at"],
                generation_seconds=header["generation_seconds"],
                latent=arrays["latent"],
                occupancy=arrays.get("occupancy"),
                mesh=mesh,
            )
        except KeyError as exc:
            raise RecordDecodeError(f"record header lacks field {exc}") from exc


@dataclass(frozen=True, eq=False)
class LabelledRecord:
    """A sample together with the oracle's verdict on it (``dso.sim.verdict.Verdict``, unchanged)."""

    sample: SampleRecord
    verdict: Verdict

    @classmethod
    def from_verdict(cls, sample: SampleRecord, verdict: Verdict) -> LabelledRecord:
        if not isinstance(verdict, Verdict):
            raise TypeError(f"an oracle must return a dso.sim Verdict, got {type(verdict).__name__}")
        return cls(sample=sample, verdict=verdict)

    @property
    def sample_id(self) -> str:
        return self.sample.sample_id

    @property
    def adapter_version(self) -> int:
        return self.sample.adapter_version

    @property
    def stable(self) -> bool:
        return self.verdict.outcome == Outcome.stable

    def to_bytes(self) -> bytes:
        header = self.sample.header()
        header["verdict"] = self.verdict.model_dump(mode="json")
        return _encode("labelled", header, self.sample.latent, self.sample.occupancy, self.sample.mesh)

    @classmethod
    def from_bytes(cls, data: bytes) -> LabelledRecord:
        kind, header, arrays = _decode(data)
        if kind != "labelled":
            raise RecordDecodeError(f"expected a labelled record, got {kind!r}")
        if "verdict" not in header:
            raise RecordDecodeError("labelled record header lacks the verdict")
        sample = SampleRecord._from_parts(header, arrays)
        try:
            verdict = _verdict_from_header(header["verdict"])
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise RecordDecodeError(f"malformed verdict in labelled record: {exc}") from exc
        return cls(sample=sample, verdict=verdict)


# how each array is stored: dtype name in the header -> numpy dtype of the raw bytes ("packbits": bools, 8 a byte)
_ARRAY_DTYPES = {"latent": "<f2", "occupancy": "packbits", "mesh_vertices": "<f4", "mesh_faces": "<i4"}


def _encode(
    kind: str,
    header: dict[str, Any],
    latent: np.ndarray,
    occupancy: np.ndarray | None,
    mesh: SampleMesh | None = None,
) -> bytes:
    parts: dict[str, tuple[tuple[int, ...], bytes]] = {"latent": (latent.shape, latent.astype("<f2", copy=False).tobytes())}
    if occupancy is not None:
        parts["occupancy"] = (occupancy.shape, np.packbits(occupancy.reshape(-1)).tobytes())
    if mesh is not None:
        parts["mesh_vertices"] = (mesh.vertices.shape, mesh.vertices.astype("<f4", copy=False).tobytes())
        parts["mesh_faces"] = (mesh.faces.shape, mesh.faces.astype("<i4", copy=False).tobytes())
    full = dict(header)
    full["kind"] = kind
    full["format"] = FORMAT_VERSION
    full["arrays"] = {}
    offset = 0
    for name, (shape, raw) in parts.items():
        full["arrays"][name] = {"dtype": _ARRAY_DTYPES[name], "shape": list(shape), "offset": offset, "nbytes": len(raw)}
        offset += len(raw)
    header_bytes = json.dumps(full, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LEN.pack(len(header_bytes)), header_bytes, *(raw for _shape, raw in parts.values())])


def _decode(data: bytes) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """(kind, header, arrays by name); ``occupancy`` and the two mesh arrays are there only when stored."""
    view = memoryview(data)
    prefix = len(MAGIC) + _LEN.size
    if len(view) < prefix or bytes(view[: len(MAGIC)]) != MAGIC:
        raise RecordDecodeError("not a DSO record (bad magic)")
    (header_len,) = _LEN.unpack(view[len(MAGIC) : prefix])
    if len(view) < prefix + header_len:
        raise RecordDecodeError("truncated record header")
    try:
        header = json.loads(bytes(view[prefix : prefix + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordDecodeError(f"record header is not JSON: {exc}") from exc
    if header.get("format") != FORMAT_VERSION:
        raise RecordDecodeError(f"unsupported record format {header.get('format')!r}")
    body = view[prefix + header_len :]
    arrays: dict[str, np.ndarray] = {}
    try:
        specs = header["arrays"]
        if "latent" not in specs:
            raise RecordDecodeError("record header lists no latent")
        for name, spec in specs.items():
            if _ARRAY_DTYPES.get(name) != spec["dtype"]:
                raise RecordDecodeError(f"unexpected array {name!r} of dtype {spec['dtype']!r} in record header")
            shape = tuple(int(s) for s in spec["shape"])
            count = int(np.prod(shape))
            offset, nbytes = int(spec["offset"]), int(spec["nbytes"])
            packed = spec["dtype"] == "packbits"
            expected = (count + 7) // 8 if packed else np.dtype(spec["dtype"]).itemsize * count
            if min(shape, default=0) < 0 or offset < 0 or nbytes != expected:
                raise RecordDecodeError(f"array {name!r}: byte length disagrees with its shape")
            if len(body) < offset + nbytes:
                raise RecordDecodeError(f"truncated record body: {len(body)} bytes, need {offset + nbytes}")
            raw = body[offset : offset + nbytes]
            if packed:
                arrays[name] = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=count).astype(np.bool_).reshape(shape)
            else:
                arrays[name] = np.frombuffer(raw, dtype=spec["dtype"]).reshape(shape)
    except (KeyError, TypeError, AttributeError) as exc:
        raise RecordDecodeError(f"malformed record header: {exc!r}") from exc
    arrays["latent"] = arrays["latent"].astype(np.float16)
    return header["kind"], header, arrays
