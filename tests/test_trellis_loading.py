"""Loading TRELLIS-format folders: round trip, precision, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dso.config import SamplerSettings
from dso.models.trellis import (
    CheckpointMismatchError,
    InvalidModelSpecError,
    ModelFileMissingError,
    ModelFolderNotFoundError,
    TrellisLoadError,
    UnsupportedModelClassError,
    build_model,
    load_checkpoint,
    load_trellis_stage1,
    sampler_settings_from_pipeline,
    save_trellis_stage1,
)
from dso.models.transformer import SparseStructureFlowModel
from dso.models.vae import SparseStructureDecoder, SparseStructureEncoder

torch.set_num_threads(1)

FLOW_ARGS = dict(resolution=4, in_channels=8, out_channels=8, model_channels=48, cond_channels=24,
                 num_blocks=2, num_heads=4, mlp_ratio=2, patch_size=1, pe_mode="ape", qk_rms_norm=True)
DEC_ARGS = dict(out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[8, 4])
ENC_ARGS = dict(in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[4, 8])
FLOW_CKPT = "ckpts/ss_flow_img_dit_L_16l8_fp16"
DEC_CKPT = "ckpts/ss_dec_conv3d_16l8_fp16"


def fp16_representable_random_(module: torch.nn.Module, seed: int) -> None:
    """Random weights already rounded to fp16, so an fp16 checkpoint stores them exactly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * 0.2).half().to(p.dtype))


@pytest.fixture
def tiny_models():
    flow = SparseStructureFlowModel(**FLOW_ARGS).eval()
    decoder = SparseStructureDecoder(**DEC_ARGS).eval()
    encoder = SparseStructureEncoder(**ENC_ARGS).eval()
    for i, m in enumerate((flow, decoder, encoder)):
        fp16_representable_random_(m, i)
    with torch.no_grad():  # pos_emb is saved too; make it fp16-exact like the weights
        flow.pos_emb.copy_(flow.pos_emb.half().float())
    return flow, decoder, encoder


@pytest.fixture
def folder(tmp_path, tiny_models) -> Path:
    flow, decoder, encoder = tiny_models
    sampler = SamplerSettings(steps=25, cfg_strength=5.0, cfg_interval=(0.4, 0.9), rescale_t=2.0)
    return save_trellis_stage1(tmp_path / "trellis", flow, decoder, encoder, sampler=sampler)


def inputs():
    gen = torch.Generator().manual_seed(11)
    return (torch.randn(2, 8, 4, 4, 4, generator=gen), torch.tensor([900.0, 100.0]),
            torch.randn(2, 3, 24, generator=gen), (torch.rand(1, 1, 8, 8, 8, generator=gen) > 0.5).float())


def test_folder_layout_is_trellis_format(folder):
    pipeline = json.loads((folder / "pipeline.json").read_text())
    assert pipeline["args"]["models"]["sparse_structure_flow_model"] == FLOW_CKPT
    spec = json.loads((folder / f"{FLOW_CKPT}.json").read_text())
    assert spec["name"] == "SparseStructureFlowModel" and spec["args"]["model_channels"] == 48
    weights = load_file(str(folder / f"{FLOW_CKPT}.safetensors"))
    assert weights["blocks.1.self_attn.to_qkv.weight"].dtype == torch.float16
    assert weights["pos_emb"].shape == (64, 48)


def test_round_trip_reproduces_outputs(folder, tiny_models):
    flow, decoder, encoder = tiny_models
    loaded = load_trellis_stage1(folder, dtype="fp32")
    x, t, cond, occ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.flow(x, t, cond), flow(x, t, cond), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(loaded.decoder(x), decoder(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(loaded.encoder(occ), encoder(occ), atol=1e-6, rtol=1e-6)
    assert not loaded.flow.training
    assert loaded.sampler == SamplerSettings(steps=25, cfg_strength=5.0, cfg_interval=(0.4, 0.9), rescale_t=2.0)
    assert loaded.pipeline["name"] == "TrellisImageTo3DPipeline" and loaded.folder == folder


def test_json_use_fp16_sets_precision_unless_overridden(folder):
    spec_path = folder / f"{FLOW_CKPT}.json"
    spec = json.loads(spec_path.read_text())
    spec["args"]["use_fp16"] = True  # as in the released TRELLIS json
    spec_path.write_text(json.dumps(spec))
    as_json = load_trellis_stage1(folder)
    assert as_json.flow.dtype == torch.float16
    assert as_json.flow.blocks[0].mlp.mlp[0].weight.dtype == torch.float16
    assert as_json.flow.blocks[0].norm2.weight.dtype == torch.float32
    assert as_json.decoder.dtype == torch.float32  # its json says use_fp16 false
    bf16 = load_trellis_stage1(folder, dtype="bf16")
    assert bf16.flow.dtype == bf16.decoder.dtype == torch.bfloat16
    x, t, cond, _ = inputs()
    with torch.no_grad():
        assert torch.isfinite(as_json.flow(x, t, cond)).all()


def test_encoder_is_found_at_trellis_default_name_or_left_out(folder):
    pipeline_path = folder / "pipeline.json"
    pipeline = json.loads(pipeline_path.read_text())
    del pipeline["args"]["models"]["sparse_structure_encoder"]  # TRELLIS's own pipeline.json omits it
    pipeline_path.write_text(json.dumps(pipeline))
    assert isinstance(load_trellis_stage1(folder).encoder, SparseStructureEncoder)
    (folder / "ckpts/ss_enc_conv3d_16l8_fp16.json").unlink()
    assert load_trellis_stage1(folder).encoder is None
    assert load_trellis_stage1(folder, load_encoder=False).encoder is None


def test_build_model_registry():
    assert isinstance(build_model("SparseStructureDecoder", DEC_ARGS), SparseStructureDecoder)
    with pytest.raises(UnsupportedModelClassError, match="SLatFlowModel"):
        build_model("SLatFlowModel", {})
    with pytest.raises(InvalidModelSpecError, match="unexpected keyword"):
        build_model("SparseStructureDecoder", DEC_ARGS | {"colour": "red"})


# --- errors ---------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFolderNotFoundError, match="not found"):
        load_trellis_stage1(tmp_path / "nope")


def test_missing_files(folder):
    (folder / f"{DEC_CKPT}.safetensors").unlink()
    with pytest.raises(ModelFileMissingError, match="ss_dec_conv3d_16l8_fp16.safetensors"):
        load_trellis_stage1(folder)
    (folder / "pipeline.json").unlink()
    with pytest.raises(ModelFileMissingError, match="pipeline.json"):
        load_trellis_stage1(folder)


def test_unknown_class(folder):
    spec_path = folder / f"{DEC_CKPT}.json"
    spec = json.loads(spec_path.read_text())
    spec["name"] = "SparseStructureDecoderV9"
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(UnsupportedModelClassError, match="SparseStructureDecoderV9"):
        load_trellis_stage1(folder)


def test_wrong_class_for_a_pipeline_slot(folder):
    pipeline_path = folder / "pipeline.json"
    pipeline = json.loads(pipeline_path.read_text())
    pipeline["args"]["models"]["sparse_structure_decoder"] = FLOW_CKPT
    pipeline_path.write_text(json.dumps(pipeline))
    with pytest.raises(InvalidModelSpecError, match="must be a SparseStructureDecoder"):
        load_trellis_stage1(folder)


def _edit_weights(folder: Path, edit) -> None:
    path = folder / f"{FLOW_CKPT}.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_wrong_shape_names_key_and_both_shapes(folder):
    _edit_weights(folder, lambda s: s.update({"blocks.1.cross_attn.to_kv.weight": torch.zeros(96, 32, dtype=torch.float16)}))
    with pytest.raises(CheckpointMismatchError) as info:
        load_trellis_stage1(folder)
    message = str(info.value)
    assert "blocks.1.cross_attn.to_kv.weight: expected [96, 24], found [96, 32]" in message
    assert info.value.diff.mismatched == [("blocks.1.cross_attn.to_kv.weight", (96, 24), (96, 32))]


def test_missing_and_unexpected_keys_are_named(folder):
    def edit(state):
        del state["blocks.0.self_attn.q_rms_norm.gamma"]
        state["blocks.0.self_attn.rope.freqs"] = torch.zeros(3)
    _edit_weights(folder, edit)
    with pytest.raises(CheckpointMismatchError, match="missing keys \\(1\\): blocks.0.self_attn.q_rms_norm.gamma") as info:
        load_trellis_stage1(folder)
    assert "unexpected keys (1): blocks.0.self_attn.rope.freqs" in str(info.value)
    assert isinstance(info.value, TrellisLoadError)


def test_load_checkpoint_non_strict_reports_but_still_rejects_shapes(folder, tiny_models):
    flow = SparseStructureFlowModel(**FLOW_ARGS)
    path = folder / f"{FLOW_CKPT}.safetensors"
    _edit_weights(folder, lambda s: s.pop("out_layer.bias"))
    with pytest.raises(CheckpointMismatchError, match="out_layer.bias"):
        load_checkpoint(flow, path)
    diff = load_checkpoint(flow, path, strict=False)
    assert diff.missing == ["out_layer.bias"] and not diff.unexpected
    torch.testing.assert_close(flow.blocks[1].mlp.mlp[2].weight, tiny_models[0].blocks[1].mlp.mlp[2].weight)
    _edit_weights(folder, lambda s: s.update({"input_layer.weight": torch.zeros(48, 9)}))
    with pytest.raises(CheckpointMismatchError, match="input_layer.weight: expected \\[48, 8\\], found \\[48, 9\\]"):
        load_checkpoint(flow, path, strict=False)
    with pytest.raises(ModelFileMissingError):
        load_checkpoint(flow, folder / "absent.safetensors")


def test_malformed_json(folder):
    (folder / f"{DEC_CKPT}.json").write_text("{not json")
    with pytest.raises(InvalidModelSpecError, match="not valid json"):
        load_trellis_stage1(folder)


# --- sampler params -------------------------------------------------------------------


def test_sampler_params_from_trellis_pipeline_json():
    pipeline = {"args": {"sparse_structure_sampler": {
        "name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
        "params": {"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}}}
    s = sampler_settings_from_pipeline(pipeline)
    assert (s.steps, s.cfg_strength, s.cfg_interval, s.rescale_t, s.sigma_min) == (25, 7.5, (0.5, 1.0), 3.0, 1e-5)


def test_sampler_params_aliases_defaults_and_bad_values():
    trellis2 = {"args": {"sparse_structure_sampler": {"args": {"sigma_min": 1e-4}, "params": {
        "steps": 12, "guidance_strength": 6.0, "guidance_rescale": 0.7, "guidance_interval": [0.6, 1.0], "rescale_t": 5.0}}}}
    s = sampler_settings_from_pipeline(trellis2)
    assert (s.cfg_strength, s.cfg_interval, s.rescale_t, s.sigma_min) == (6.0, (0.6, 1.0), 5.0, 1e-4)
    base = SamplerSettings(steps=7)
    assert sampler_settings_from_pipeline({"args": {}}, base=base) == base
    with pytest.raises(InvalidModelSpecError, match="steps"):
        sampler_settings_from_pipeline({"args": {"sparse_structure_sampler": {"params": {"steps": 0}}}})
