"""Flow transformer: TRELLIS key names / shapes at full size, numerics at tiny size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dso.config import FlowTransformerSettings
from dso.models.attention import MultiHeadAttention
from dso.models.embeddings import sincos_position_embedding, timestep_frequencies
from dso.models.transformer import SparseStructureFlowModel, patchify, unpatchify

torch.set_num_threads(1)

TRELLIS_L_ARGS = {  # ckpts/ss_flow_img_dit_L_16l8_fp16.json
    "resolution": 16,
    "in_channels": 8,
    "out_channels": 8,
    "model_channels": 1024,
    "cond_channels": 1024,
    "num_blocks": 24,
    "num_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 1,
    "pe_mode": "ape",
    "qk_rms_norm": True,
    "use_fp16": True,
}
TINY_ARGS = dict(
    resolution=4, in_channels=8, out_channels=8, model_channels=48, cond_channels=24,
    num_blocks=2, num_heads=4, mlp_ratio=2, patch_size=1, qk_rms_norm=True,
)


def expected_trellis_l_shapes() -> dict[str, tuple[int, ...]]:
    """Every state-dict entry of TRELLIS-L stage 1, written out from the reference facts."""
    c, hidden, heads = 1024, 4096, 16
    shapes: dict[str, tuple[int, ...]] = {
        "pos_emb": (16**3, c),
        "t_embedder.mlp.0.weight": (c, 256),
        "t_embedder.mlp.0.bias": (c,),
        "t_embedder.mlp.2.weight": (c, c),
        "t_embedder.mlp.2.bias": (c,),
        "input_layer.weight": (c, 8),
        "input_layer.bias": (c,),
        "out_layer.weight": (8, c),
        "out_layer.bias": (8,),
    }
    for n in range(24):
        b = f"blocks.{n}"
        shapes |= {
            f"{b}.norm2.weight": (c,),
            f"{b}.norm2.bias": (c,),
            f"{b}.self_attn.to_qkv.weight": (3 * c, c),
            f"{b}.self_attn.to_qkv.bias": (3 * c,),
            f"{b}.self_attn.q_rms_norm.gamma": (heads, c // heads),
            f"{b}.self_attn.k_rms_norm.gamma": (heads, c // heads),
            f"{b}.self_attn.to_out.weight": (c, c),
            f"{b}.self_attn.to_out.bias": (c,),
            f"{b}.cross_attn.to_q.weight": (c, c),
            f"{b}.cross_attn.to_q.bias": (c,),
            f"{b}.cross_attn.to_kv.weight": (2 * c, c),
            f"{b}.cross_attn.to_kv.bias": (2 * c,),
            f"{b}.cross_attn.to_out.weight": (c, c),
            f"{b}.cross_attn.to_out.bias": (c,),
            f"{b}.mlp.mlp.0.weight": (hidden, c),
            f"{b}.mlp.mlp.0.bias": (hidden,),
            f"{b}.mlp.mlp.2.weight": (c, hidden),
            f"{b}.mlp.mlp.2.bias": (c,),
            f"{b}.adaLN_modulation.1.weight": (6 * c, c),
            f"{b}.adaLN_modulation.1.bias": (6 * c,),
        }
    return shapes


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Replace the zero-initialised weights so every path contributes to the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_scale = name.endswith("gamma") or ("norm" in name and name.endswith("weight"))
            p.copy_((torch.randn(p.shape, generator=gen) * std + (1.0 if is_scale else 0.0)).to(p.dtype))


def tiny_model(seed: int = 0, **overrides) -> SparseStructureFlowModel:
    torch.manual_seed(seed)
    model = SparseStructureFlowModel(**(TINY_ARGS | overrides))
    randomize_(model, seed)
    return model.eval()


def tiny_inputs(batch: int = 2, seed: int = 1, resolution: int = 4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 8, resolution, resolution, resolution, generator=gen)
    t = torch.rand(batch, generator=gen) * 1000
    cond = torch.randn(batch, 5, 24, generator=gen)
    return x, t, cond


# --- full size, on the meta device -----------------------------------------------------


@pytest.fixture(scope="module")
def trellis_l() -> SparseStructureFlowModel:
    with torch.device("meta"):
        return SparseStructureFlowModel(**TRELLIS_L_ARGS)


def test_full_size_state_dict_has_trellis_keys_and_shapes(trellis_l):
    got = {k: tuple(v.shape) for k, v in trellis_l.state_dict().items()}
    expected = expected_trellis_l_shapes()
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert wrong == {}
    assert got["blocks.23.self_attn.q_rms_norm.gamma"] == (16, 64)
    assert got["blocks.0.self_attn.to_qkv.weight"] == (3072, 1024)
    assert got["pos_emb"] == (4096, 1024)


def test_full_size_parameter_count_is_about_555m(trellis_l):
    count = sum(p.numel() for p in trellis_l.parameters())
    c, hidden = 1024, 4096
    per_block = (
        (c * 3 * c + 3 * c) + (c * c + c)  # self-attention to_qkv, to_out
        + 2 * c  # q / k RMS-norm gammas (16 x 64 each)
        + (c * c + c) + (c * 2 * c + 2 * c) + (c * c + c)  # cross-attention to_q, to_kv, to_out
        + 2 * c  # norm2 weight, bias
        + (c * hidden + hidden) + (hidden * c + c)  # mlp
        + (c * 6 * c + 6 * c)  # adaLN
    )
    top = (256 * c + c) + (c * c + c) + (8 * c + c) + (c * 8 + 8)
    assert count == 24 * per_block + top
    assert 550e6 < count < 560e6


def test_fp16_json_keeps_trellis_precision_split(trellis_l):
    sd = trellis_l.state_dict()
    assert sd["blocks.3.mlp.mlp.0.weight"].dtype == torch.float16
    assert sd["blocks.3.adaLN_modulation.1.weight"].dtype == torch.float16
    for fp32_key in ("blocks.3.norm2.weight", "blocks.3.self_attn.q_rms_norm.gamma", "input_layer.weight",
                     "out_layer.weight", "t_embedder.mlp.0.weight", "pos_emb"):
        assert sd[fp32_key].dtype == torch.float32, fp32_key
    assert trellis_l.dtype == torch.float16
    assert trellis_l.config["use_fp16"] is True


def test_lora_target_modules_are_plain_linears(trellis_l):
    names = {n.rsplit(".", 1)[-1]: type(m) for n, m in trellis_l.named_modules() if n}
    for target in ("to_qkv", "to_q", "to_kv", "to_out"):
        assert names[target] is torch.nn.Linear


def test_settings_defaults_build_trellis_l():
    with torch.device("meta"):
        model = SparseStructureFlowModel.from_settings(FlowTransformerSettings())
    assert sum(p.numel() for p in model.parameters()) == 555_543_560


# --- embeddings and attention ------------------------------------------------------


def test_position_embedding_follows_sincos_formula():
    channels, grid = 1024, 16
    emb = sincos_position_embedding(grid, channels)
    freq_dim = channels // 3 // 2  # 170
    freqs = 1.0 / 10000 ** (torch.arange(freq_dim) / freq_dim)
    coord = (3, 7, 11)
    row = emb[coord[0] * grid * grid + coord[1] * grid + coord[2]]
    for axis, value in enumerate(coord):
        chunk = row[axis * 2 * freq_dim:(axis + 1) * 2 * freq_dim]
        torch.testing.assert_close(chunk[:freq_dim], torch.sin(value * freqs))
        torch.testing.assert_close(chunk[freq_dim:], torch.cos(value * freqs))
    assert torch.all(row[6 * freq_dim:] == 0) and 6 * freq_dim == 1020


def test_timestep_frequencies_are_cos_then_sin():
    t = torch.tensor([0.0, 250.0, 999.0])
    emb = timestep_frequencies(t, 256)
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    torch.testing.assert_close(emb[:, :128], torch.cos(t[:, None] * freqs))
    torch.testing.assert_close(emb[:, 128:], torch.sin(t[:, None] * freqs))


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_attention_matches_explicit_softmax(kind):
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, num_heads=4, ctx_channels=16 if kind == "cross" else None, kind=kind, qk_rms_norm=True)
    with torch.no_grad():
        attn.q_rms_norm.gamma.uniform_(0.5, 1.5)
        attn.k_rms_norm.gamma.uniform_(0.5, 1.5)
    x = torch.randn(2, 6, 32)
    ctx = torch.randn(2, 9, 16) if kind == "cross" else None
    if kind == "self":
        q, k, v = attn.to_qkv(x).reshape(2, 6, 3, 4, 8).unbind(2)
    else:
        q = attn.to_q(x).reshape(2, 6, 4, 8)
        k, v = attn.to_kv(ctx).reshape(2, 9, 2, 4, 8).unbind(2)
    q = F.normalize(q, dim=-1) * attn.q_rms_norm.gamma * math.sqrt(8)
    k = F.normalize(k, dim=-1) * attn.k_rms_norm.gamma * math.sqrt(8)
    weights = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(8), dim=-1)
    ref = attn.to_out(torch.einsum("bhlm,bmhd->blhd", weights, v).reshape(2, 6, 32))
    torch.testing.assert_close(attn(x, ctx), ref, atol=1e-5, rtol=1e-5)


# --- forward -----------------------------------------------------------------------


def test_fresh_model_predicts_zero_like_trellis_init():
    model = SparseStructureFlowModel(**TINY_ARGS)
    x, t, cond = tiny_inputs()
    assert torch.count_nonzero(model(x, t, cond)) == 0


def test_forward_shape_and_dependence_on_every_input():
    model = tiny_model()
    x, t, cond = tiny_inputs()
    with torch.no_grad():
        out = model(x, t, cond)
        assert out.shape == x.shape and out.dtype == torch.float32 and out.abs().mean() > 0
        assert not torch.allclose(model(x, t + 100, cond), out)
        assert not torch.allclose(model(x, t, cond * 2), out)
        assert not torch.allclose(model(x * 0.5, t, cond), out)
        # samples do not interact: a batch of one gives the same first row
        torch.testing.assert_close(model(x[:1], t[:1], cond[:1]), out[:1], atol=1e-5, rtol=1e-5)


def test_patchify_round_trip_and_patch2_model():
    x = torch.randn(2, 8, 4, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (2, 64, 2, 2, 2)
    # channel c * 8 + (i * 4 + j * 2 + k) of patch (d, h, w) is voxel (2d + i, 2h + j, 2w + k)
    assert p[1, 3 * 8 + 1 * 4 + 0 * 2 + 1, 1, 0, 1] == x[1, 3, 3, 0, 3]
    torch.testing.assert_close(unpatchify(p, 2), x)
    model = tiny_model(patch_size=2)
    assert model.input_layer.in_features == 8 * 8 and model.pos_emb.shape == (8, 48)
    xx, t, cond = tiny_inputs()
    with torch.no_grad():
        assert model(xx, t, cond).shape == xx.shape


def test_share_mod_uses_one_top_level_modulation():
    model = tiny_model(share_mod=True)
    keys = model.state_dict().keys()
    assert "adaLN_modulation.1.weight" in keys
    assert not any(k.startswith("blocks.0.adaLN") for k in keys)
    x, t, cond = tiny_inputs()
    with torch.no_grad():
        assert model(x, t, cond).abs().mean() > 0


@pytest.mark.parametrize("dtype,tol", [("bf16", 0.08), ("fp16", 0.02)])
def test_half_precision_forward_runs_on_cpu_and_tracks_fp32(dtype, tol):
    ref_model = tiny_model(seed=3)
    half = tiny_model(seed=3, dtype=dtype)
    target = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert half.blocks[0].self_attn.to_qkv.weight.dtype == target
    assert half.blocks[0].norm2.weight.dtype == torch.float32
    assert half.input_layer.weight.dtype == torch.float32
    x, t, cond = tiny_inputs()
    with torch.no_grad():
        ref, out = ref_model(x, t, cond), half(x, t, cond)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rel = (out - ref).norm() / ref.norm()
    assert rel < tol, f"{dtype} relative error {rel:.4f}"


def test_set_compute_dtype_switches_back_to_fp32():
    model = tiny_model(seed=4)
    x, t, cond = tiny_inputs()
    with torch.no_grad():
        ref = model(x, t, cond)
        model.set_compute_dtype("bf16")
        assert model.dtype == torch.bfloat16
        model.set_compute_dtype(torch.float32)
        # bf16 rounding of the weights is permanent, so compare loosely
        assert (model(x, t, cond) - ref).norm() / ref.norm() < 0.05


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, ckpt = tiny_model(seed=5), tiny_model(seed=5, use_checkpoint=True)
    x, t, cond = tiny_inputs()
    grads = []
    for model in (plain, ckpt):
        model.train()
        model(x, t, cond).square().mean().backward()
        grads.append(model.blocks[0].self_attn.to_qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    x, t, cond = tiny_inputs()
    with pytest.raises(ValueError, match="x has shape"):
        model(x[:, :4], t, cond)
    with pytest.raises(ValueError, match="t has shape"):
        model(x, t[:1], cond)
    with pytest.raises(ValueError, match="cond has shape"):
        model(x, t, cond[..., :3])
    with pytest.raises(ValueError, match="pe_mode"):
        SparseStructureFlowModel(**(TINY_ARGS | {"pe_mode": "rope"}))
    with pytest.raises(ValueError, match="unsupported compute dtype"):
        SparseStructureFlowModel(**TINY_ARGS, dtype="fp8")
