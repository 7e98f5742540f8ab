"""Records that travel through the broker, with a compact binary encoding.

A sample is the generator's latent (float16, of the generator's declared
``latent_shape``: [C, R, R, R] for TRELLIS stage 1; the header carries the shape,
so any layout fits) plus its decoded occupancy (bool, [R, R, R], bit-packed):
about 96 KB at TRELLIS size. Encoding is a tiny
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
from typing import Any

import numpy as np

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
class SampleRecord:
    """One generated sample, tagged with the adapter version that made it."""

    prompt_id: str
    view: int
    adapter_version: int
    seed: int
    latent: np.ndarray  # float16, the generator's latent_shape ([C, R, R, R] for TRELLIS stage 1)
    occupancy: np.ndarray  # bool (R, R, R)
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
        object.__setattr__(self, "occupancy", _as_bool_occupancy(self.occupancy))

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
        return _encode("sample", self.header(), self.latent, self.occupancy)

    @classmethod
    def from_bytes(cls, data: bytes) -> SampleRecord:
        kind, header, latent, occupancy = _decode(data)
        if kind != "sample":
            raise RecordDecodeError(f"expected a sample record, got {kind!r}")
        return cls._from_parts(header, latent, occupancy)

    @classmethod
    def _from_parts(cls, header: Mapping[str, Any], latent: np.ndarray, occupancy: np.ndarray) -> SampleRecord:
        try:
            return cls(
                sample_id=header["sample_id"],
                prompt_id=header["prompt_id"],
                view=header["view"],
                adapter_version=header["adapter_version"],
                seed=header["seed"],
                created_at=header["created_at"],
                generation_seconds=header["generation_seconds"],
                latent=latent,
                occupancy=occupancy,
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
        return _encode("labelled", header, self.sample.latent, self.sample.occupancy)

    @classmethod
    def from_bytes(cls, data: bytes) -> LabelledRecord:
        kind, header, latent, occupancy = _decode(data)
        if kind != "labelled":
            raise RecordDecodeError(f"expected a labelled record, got {kind!r}")
        if "verdict" not in header:
            raise RecordDecodeError("labelled record header lacks the verdict")
        sample = SampleRecord._from_parts(header, latent, occupancy)
        try:
            verdict = _verdict_from_header(header["verdict"])
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise RecordDecodeError(f"malformed verdict in labelled record: {exc}") from exc
        return cls(sample=sample, verdict=verdict)


def _encode(kind: str, header: dict[str, Any], latent: np.ndarray, occupancy: np.ndarray) -> bytes:
    latent_bytes = latent.astype("<f2", copy=False).tobytes()
    occ_bytes = np.packbits(occupancy.reshape(-1)).tobytes()
    full = dict(header)
    full["kind"] = kind
    full["format"] = FORMAT_VERSION
    full["arrays"] = {
        "latent": {"dtype": "<f2", "shape": list(latent.shape), "offset": 0, "nbytes": len(latent_bytes)},
        "occupancy": {
            "dtype": "packbits",
            "shape": list(occupancy.shape),
            "offset": len(latent_bytes),
            "nbytes": len(occ_bytes),
        },
    }
    header_bytes = json.dumps(full, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LEN.pack(len(header_bytes)), header_bytes, latent_bytes, occ_bytes])


def _decode(data: bytes) -> tuple[str, dict[str, Any], np.ndarray, np.ndarray]:
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
    try:
        lat = header["arrays"]["latent"]
        occ = header["arrays"]["occupancy"]
        if lat["dtype"] != "<f2" or occ["dtype"] != "packbits":
            raise RecordDecodeError("unexpected array dtypes in record header")
        lat_shape = tuple(int(s) for s in lat["shape"])
        occ_shape = tuple(int(s) for s in occ["shape"])
        if lat["nbytes"] != 2 * int(np.prod(lat_shape)) or occ["nbytes"] != (int(np.prod(occ_shape)) + 7) // 8:
            raise RecordDecodeError("array byte lengths disagree with their shapes")
        end = max(lat["offset"] + lat["nbytes"], occ["offset"] + occ["nbytes"])
        if len(body) < end:
            raise RecordDecodeError(f"truncated record body: {len(body)} bytes, need {end}")
        latent = np.frombuffer(body[lat["offset"] : lat["offset"] + lat["nbytes"]], dtype="<f2").reshape(lat_shape)
        packed = np.frombuffer(body[occ["offset"] : occ["offset"] + occ["nbytes"]], dtype=np.uint8)
        occupancy = np.unpackbits(packed, count=int(np.prod(occ_shape))).astype(np.bool_).reshape(occ_shape)
    except (KeyError, TypeError) as exc:
        raise RecordDecodeError(f"malformed record header: {exc!r}") from exc
    return header["kind"], header, latent.astype(np.float16), occupancy
