"""LoRA adapters: PEFT on-disk compatibility, verified hot swaps, released-file import."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn

from dso.config import FlowTransformerSettings, LoraSettings
from dso.models.lora import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    AdapterFormatError,
    AdapterSwapError,
    AdapterSwapper,
    adapter_sha256,
    attach_lora,
    flow_model_probe,
    hot_swap,
    import_released_lora,
    live_lora_parameters,
    load_adapter_weights,
    save_adapter,
    trainable_parameter_count,
)
from dso.models.transformer import SparseStructureFlowModel

TINY_FLOW = FlowTransformerSettings(
    resolution=4, in_channels=2, out_channels=2, model_channels=32, cond_channels=16, num_blocks=2, num_heads=2
)
LORA = LoraSettings(r=4, alpha=8)


def tiny_base(seed: int = 0) -> SparseStructureFlowModel:
    """A tiny flow model with every weight random (the DiT init zeroes the output layer and gates)."""
    torch.manual_seed(seed)
    model = SparseStructureFlowModel.from_settings(TINY_FLOW)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def randomise_lora_(peft_model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in live_lora_parameters(peft_model).values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def random_adapter_state(peft_model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=generator) * 0.3 for k, p in live_lora_parameters(peft_model).items()}


@pytest.fixture()
def peft_model() -> PeftModel:
    model = attach_lora(tiny_base(), LORA)
    randomise_lora_(model, seed=1)
    return model


def probe_output(model: nn.Module) -> torch.Tensor:
    return flow_model_probe(model, LORA)(model)


def test_trainable_parameters_are_exactly_the_lora_matrices():
    base = tiny_base()
    wrapped = [
        (name, m.in_features, m.out_features)
        for name, m in base.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in LORA.target_modules
    ]
    # 2 blocks x (to_qkv, to_out self; to_q, to_kv, to_out cross)
    assert len(wrapped) == 2 * 5
    model = attach_lora(base, LORA)
    expected = sum(LORA.r * (fan_in + fan_out) for _, fan_in, fan_out in wrapped)
    assert trainable_parameter_count(model) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_fresh_adapter_leaves_outputs_unchanged_and_gradients_reach_lora():
    base = tiny_base()
    reference = probe_output(base)
    model = attach_lora(base, LORA)
    assert torch.equal(probe_output(model), reference)  # B = 0 at init
    x, t, cond = torch.randn(1, 2, 4, 4, 4), torch.tensor([300.0]), torch.randn(1, 3, 16)
    model(x, t, cond).square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_B." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_attach_refuses_model_without_targets():
    with pytest.raises(ValueError, match="to_qkv"):
        attach_lora(nn.Sequential(nn.Linear(3, 3)), LORA)


def test_saved_adapter_loads_with_stock_peft_and_gives_identical_outputs(peft_model, tmp_path):
    directory = save_adapter(peft_model, tmp_path / "v1")
    assert (directory / ADAPTER_CONFIG_FILE).is_file() and (directory / ADAPTER_WEIGHTS_FILE).is_file()
    config = json.loads((directory / ADAPTER_CONFIG_FILE).read_text())
    assert config["r"] == LORA.r and config["lora_alpha"] == LORA.alpha
    assert set(config["target_modules"]) == set(LORA.target_modules)
    assert config["base_model_name_or_path"] == "dso.models.transformer.SparseStructureFlowModel"

    reloaded = PeftModel.from_pretrained(tiny_base(), str(directory))
    expected = probe_output(peft_model)
    assert not torch.equal(expected, probe_output(tiny_base()))  # the adapter matters
    assert torch.equal(probe_output(reloaded), expected)

    weights = load_adapter_weights(directory)
    assert set(weights) == set(live_lora_parameters(peft_model))
    assert adapter_sha256(directory) == hashlib.sha256((directory / ADAPTER_WEIGHTS_FILE).read_bytes()).hexdigest()


def test_non_default_adapter_name_saves_flat(tmp_path):
    model = attach_lora(tiny_base(), LORA, adapter_name="policy")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B.policy." in name:
                param.normal_()
    save_adapter(model, tmp_path / "a", adapter_name="policy")
    assert (tmp_path / "a" / ADAPTER_WEIGHTS_FILE).is_file()
    reloaded = PeftModel.from_pretrained(tiny_base(), str(tmp_path / "a"))
    assert torch.equal(probe_output(reloaded), probe_output(model))


def test_hot_swap_changes_output_to_the_new_adapter(peft_model, tmp_path):
    donor = attach_lora(tiny_base(), LORA)
    randomise_lora_(donor, seed=7)
    save_adapter(donor, tmp_path / "v2")
    swapper = AdapterSwapper(peft_model, flow_model_probe(peft_model, LORA), LORA)
    before = probe_output(peft_model)
    record = swapper.swap(tmp_path / "v2", version="v2", expect_change=True)
    after = probe_output(peft_model)
    assert record.weights_changed and record.verified and record.version == "v2"
    assert record.max_abs_output_change == pytest.approx(float((after - before).abs().max()))
    assert record.max_abs_output_change > 0
    assert torch.equal(after, probe_output(donor))
    assert swapper.version == "v2" and record.previous_digest != record.digest


def test_swap_to_identical_weights_is_a_verified_no_change(peft_model):
    current = {k: p.detach().clone() for k, p in live_lora_parameters(peft_model).items()}
    swapper = AdapterSwapper(peft_model, flow_model_probe(peft_model, LORA), LORA)
    record = swapper.swap(current, version="same")
    assert not record.weights_changed
    assert record.max_abs_output_change == 0.0
    with pytest.raises(AdapterSwapError, match="no-op swap"):
        swapper.swap(current, version="v-next", expect_change=True)
    with pytest.raises(AdapterSwapError, match="announced as unchanged"):
        swapper.swap(random_adapter_state(peft_model, 11), expect_change=False)


def test_swap_that_cannot_reach_the_forward_pass_raises_and_rolls_back(peft_model):
    old = {k: p.detach().clone() for k, p in live_lora_parameters(peft_model).items()}
    probe = flow_model_probe(peft_model, LORA)
    new = random_adapter_state(peft_model, 5)
    with peft_model.disable_adapter():  # LoRA bypassed: copying weights cannot change the output
        with pytest.raises(AdapterSwapError, match="silent no-op"):
            hot_swap(peft_model, new, probe, LORA)
    for key, param in live_lora_parameters(peft_model).items():
        assert torch.equal(param, old[key]), f"{key} was not rolled back"
    # Same swap with the adapter live goes through.
    assert hot_swap(peft_model, new, probe, LORA).weights_changed


def test_swap_with_zero_b_before_and_after_expects_no_output_change(tmp_path):
    model = attach_lora(tiny_base(), LORA)  # fresh: every lora_B is zero
    new = random_adapter_state(model, 2)
    new = {k: (torch.zeros_like(v) if ".lora_B." in k else v) for k, v in new.items()}
    record = hot_swap(model, new, flow_model_probe(model, LORA), LORA)
    assert not record.weights_changed and record.max_abs_output_change == 0.0


def test_swap_with_wrong_keys_or_shapes_names_them(peft_model):
    probe = flow_model_probe(peft_model, LORA)
    good = random_adapter_state(peft_model, 9)
    before = {k: p.detach().clone() for k, p in live_lora_parameters(peft_model).items()}
    missing_key = sorted(good)[0]
    broken = dict(good)
    del broken[missing_key]
    broken["base_model.model.blocks.9.self_attn.to_qkv.lora_A.weight"] = torch.zeros(4, 32)
    with pytest.raises(AdapterSwapError) as info:
        hot_swap(peft_model, broken, probe, LORA)
    assert missing_key in str(info.value) and "blocks.9" in str(info.value)
    wrong_shape = dict(good)
    key_a = next(k for k in good if k.endswith("lora_A.weight"))
    wrong_shape[key_a] = torch.zeros(8, good[key_a].shape[1])
    with pytest.raises(AdapterSwapError, match="shape mismatch"):
        hot_swap(peft_model, wrong_shape, probe, LORA)
    for key, param in live_lora_parameters(peft_model).items():
        assert torch.equal(param, before[key])


def fabricate_released_state(peft_model: PeftModel, with_adapter_name: bool) -> dict[str, torch.Tensor]:
    """A whole-model PEFT state dict like the DSO release: base weights plus LoRA A/B."""
    state = {k: v.detach().clone() for k, v in peft_model.state_dict().items()}
    assert any(".base_layer." in k for k in state) and any(".lora_A.default." in k for k in state)
    if not with_adapter_name:
        state = {k.replace(".default.", "."): v for k, v in state.items()}
    return state


@pytest.mark.parametrize("with_adapter_name", [True, False])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_import_released_lora_round_trip(peft_model, tmp_path, with_adapter_name, suffix):
    state = fabricate_released_state(peft_model, with_adapter_name)
    source = tmp_path / f"released{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(source))
    else:
        torch.save({"state_dict": state}, source)
    settings_in = LoraSettings(r=64, alpha=8, target_modules=["to_qkv", "to_q", "to_kv", "to_out", "fc"])
    adapter, imported = import_released_lora(source, settings_in, tmp_path / "adapter")
    assert imported.r == LORA.r  # read off the tensors, not the settings
    assert sorted(imported.target_modules) == ["to_kv", "to_out", "to_q", "to_qkv"]
    assert set(adapter) == set(live_lora_parameters(peft_model))
    assert not any("base_layer" in k for k in adapter)
    reloaded = PeftModel.from_pretrained(tiny_base(), str(tmp_path / "adapter"))
    assert torch.equal(probe_output(reloaded), probe_output(peft_model))


def test_import_rejects_inconsistent_files(peft_model, tmp_path):
    state = fabricate_released_state(peft_model, with_adapter_name=True)
    no_lora = {k: v for k, v in state.items() if "lora_" not in k}
    save_file({k: v.contiguous() for k, v in no_lora.items()}, str(tmp_path / "base.safetensors"))
    with pytest.raises(AdapterFormatError, match="no LoRA tensors"):
        import_released_lora(tmp_path / "base.safetensors", LORA, tmp_path / "out1")
    orphan = {k: v for k, v in state.items() if not (k.endswith("lora_A.default.weight") and "blocks.0." in k)}
    save_file({k: v.contiguous() for k, v in orphan.items()}, str(tmp_path / "orphan.safetensors"))
    with pytest.raises(AdapterFormatError, match="lora_B without lora_A"):
        import_released_lora(tmp_path / "orphan.safetensors", LORA, tmp_path / "out2")


def test_trellis_large_lora_size_matches_the_paper():
    """r=64 on TRELLIS-L attention is about 20.4 M parameters (built on the meta device: no memory)."""
    with torch.device("meta"):
        base = SparseStructureFlowModel.from_settings(FlowTransformerSettings())
        model = attach_lora(base, LoraSettings())
    width, blocks, r = 1024, 24, 64
    # self: to_qkv (w -> 3w), to_out (w -> w); cross: to_q (w -> w), to_kv (cond w -> 2w), to_out (w -> w)
    per_block = r * ((width + 3 * width) + 2 * width + 2 * width + (width + 2 * width) + 2 * width)
    assert trainable_parameter_count(model) == blocks * per_block == 20_447_232


def test_probe_restores_training_mode(peft_model):
    peft_model.train()
    flow_model_probe(peft_model, LORA)(peft_model)
    assert peft_model.training


def test_hot_swap_on_a_bf16_model():
    torch.manual_seed(0)
    base = SparseStructureFlowModel.from_settings(TINY_FLOW, dtype="bf16")
    with torch.no_grad():
        for param in base.parameters():
            param.normal_(0.0, 0.2)
    model = attach_lora(base, LORA)
    record = hot_swap(model, random_adapter_state(model, 4), flow_model_probe(model, LORA), LORA)
    assert record.weights_changed and record.max_abs_output_change > 0
    dtypes = {p.dtype for p in live_lora_parameters(model).values()}
    assert record.tensors == len(live_lora_parameters(model)) and len(dtypes) == 1
