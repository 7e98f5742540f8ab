"""Records: compact binary round trips, validation and corrupt input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_broker import make_sample

from dso.broker.records import LabelledRecord, RecordDecodeError, SampleRecord
from dso.sim.verdict import Outcome, SimStatus, StopReason, Verdict


def test_sample_round_trip_keeps_every_field_and_array() -> None:
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((3, 5, 5, 5)).astype(np.float32)
    occupancy = rng.random((5, 5, 5)) > 0.3  # 125 bits: not a multiple of 8
    sample = SampleRecord(
        prompt_id="abc", view=2, adapter_version=7, seed=42, latent=latent, occupancy=occupancy, generation_seconds=1.5
    )
    decoded = SampleRecord.from_bytes(sample.to_bytes())
    assert decoded.header() == sample.header()
    assert decoded.latent.dtype == np.float16 and decoded.latent.shape == (3, 5, 5, 5)
    np.testing.assert_array_equal(decoded.latent, latent.astype(np.float16))
    assert decoded.occupancy.dtype == np.bool_
    np.testing.assert_array_equal(decoded.occupancy, occupancy)


def test_sample_ids_are_unique_uuid4_hex() -> None:
    ids = {make_sample(seed=i).sample_id for i in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_trellis_sized_record_is_compact() -> None:
    sample = SampleRecord(
        prompt_id="p",
        view=0,
        adapter_version=0,
        seed=0,
        latent=np.zeros((8, 16, 16, 16), np.float16),
        occupancy=np.ones((64, 64, 64), bool),
    )
    size = len(sample.to_bytes())
    assert 8 * 16**3 * 2 + 64**3 // 8 < size < 8 * 16**3 * 2 + 64**3 // 8 + 1024


def test_labelled_round_trip_keeps_the_oracles_verdict_unchanged() -> None:
    sample = make_sample(adapter_version=3, seed=5)
    verdict = Verdict(
        status=SimStatus.ok, stable=False, tilt_deg=47.5, rotation_deg=60.25, message="fell over", elapsed_s=0.75,
        settle_time_s=1.2, stop_reason=StopReason.fell, mass=0.3, com=[0.0, 0.0, 0.1],
    )
    labelled = LabelledRecord.from_verdict(sample, verdict)
    assert labelled.verdict is verdict
    decoded = LabelledRecord.from_bytes(labelled.to_bytes())
    assert decoded.sample_id == sample.sample_id
    assert decoded.adapter_version == 3
    assert decoded.verdict == verdict and decoded.verdict.outcome == Outcome.unstable
    assert decoded.stable is False
    np.testing.assert_array_equal(decoded.sample.occupancy, sample.occupancy)


def test_failure_verdicts_round_trip_without_physics_fields() -> None:
    for status in (SimStatus.invalid_input, SimStatus.sim_error, SimStatus.timeout):
        verdict = Verdict.failure(status, "no physics result")
        assert verdict.tilt_deg is None
        decoded = LabelledRecord.from_bytes(LabelledRecord.from_verdict(make_sample(), verdict).to_bytes())
        assert decoded.verdict == verdict and not decoded.verdict.outcome.judged and not decoded.stable


def test_only_the_oracles_verdict_type_is_accepted() -> None:
    with pytest.raises(TypeError, match="Verdict"):
        LabelledRecord.from_verdict(make_sample(), {"stable": True, "tilt_deg": 1.0, "rotation_deg": 1.0})


def test_kind_mismatch_and_corrupt_bytes_are_rejected() -> None:
    sample_bytes = make_sample().to_bytes()
    with pytest.raises(RecordDecodeError, match="expected a labelled"):
        LabelledRecord.from_bytes(sample_bytes)
    with pytest.raises(RecordDecodeError, match="magic"):
        SampleRecord.from_bytes(b"PICKLE" + sample_bytes)
    with pytest.raises(RecordDecodeError, match="truncated"):
        SampleRecord.from_bytes(sample_bytes[:-10])
    with pytest.raises(RecordDecodeError):
        SampleRecord.from_bytes(sample_bytes[:12])


def test_the_latent_shape_comes_from_the_data() -> None:
    """Records follow the generator's declared latent_shape: a token-sequence latent [L, C] round-trips like a grid."""
    for shape in [(8, 4, 4, 4), (16, 8), (3, 2, 5)]:
        latent = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 10
        record = SampleRecord(prompt_id="p", view=0, adapter_version=0, seed=0, latent=latent, occupancy=np.zeros((4, 4, 4), bool))
        back = SampleRecord.from_bytes(record.to_bytes())
        assert back.latent.shape == shape and back.latent.dtype == np.float16
        np.testing.assert_array_equal(back.latent, latent.astype(np.float16))


def test_bad_arrays_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="latent_shape"):
        SampleRecord(
            prompt_id="p", view=0, adapter_version=0, seed=0, latent=np.float32(1.0), occupancy=np.zeros((4, 4, 4), bool)
        )
    with pytest.raises(ValueError, match="boolean"):
        SampleRecord(
            prompt_id="p",
            view=0,
            adapter_version=0,
            seed=0,
            latent=np.zeros((1, 4, 4, 4)),
            occupancy=np.full((4, 4, 4), 2),
        )
    with pytest.raises(ValueError, match="adapter_version"):
        make_sample(adapter_version=-1)
