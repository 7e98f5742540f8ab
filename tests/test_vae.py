"""Stage-1 VAE: TRELLIS key names / shapes at full size, shapes and numerics at tiny size."""

from __future__ import annotations

import pytest
import torch

from dso.config import DecoderSettings, EncoderSettings
from dso.models.vae import SparseStructureDecoder, SparseStructureEncoder, pixel_shuffle_3d

torch.set_num_threads(1)

TINY_DECODER = dict(out_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[8, 6, 4])
TINY_ENCODER = dict(in_channels=1, latent_channels=8, num_res_blocks=1, num_res_blocks_middle=1, channels=[4, 6, 8])


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Replace zero-initialised convs so every residual branch contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_scale = "norm" in name and name.endswith("weight") or name == "out_layer.0.weight"
            p.copy_((torch.randn(p.shape, generator=gen) * std + (1.0 if is_scale else 0.0)).to(p.dtype))


def resblock_shapes(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.norm1.weight": (c,), f"{prefix}.norm1.bias": (c,),
        f"{prefix}.norm2.weight": (c,), f"{prefix}.norm2.bias": (c,),
        f"{prefix}.conv1.weight": (c, c, 3, 3, 3), f"{prefix}.conv1.bias": (c,),
        f"{prefix}.conv2.weight": (c, c, 3, 3, 3), f"{prefix}.conv2.bias": (c,),
    }


def expected_decoder_shapes() -> dict[str, tuple[int, ...]]:
    """ss_dec_conv3d_16l8: channels [512, 128, 32], 2 res blocks per stage and in the middle."""
    shapes = {"input_layer.weight": (512, 8, 3, 3, 3), "input_layer.bias": (512,)}
    shapes |= resblock_shapes("middle_block.0", 512) | resblock_shapes("middle_block.1", 512)
    shapes |= resblock_shapes("blocks.0", 512) | resblock_shapes("blocks.1", 512)
    shapes |= {"blocks.2.conv.weight": (128 * 8, 512, 3, 3, 3), "blocks.2.conv.bias": (1024,)}
    shapes |= resblock_shapes("blocks.3", 128) | resblock_shapes("blocks.4", 128)
    shapes |= {"blocks.5.conv.weight": (32 * 8, 128, 3, 3, 3), "blocks.5.conv.bias": (256,)}
    shapes |= resblock_shapes("blocks.6", 32) | resblock_shapes("blocks.7", 32)
    shapes |= {"out_layer.0.weight": (32,), "out_layer.0.bias": (32,),
               "out_layer.2.weight": (1, 32, 3, 3, 3), "out_layer.2.bias": (1,)}
    return shapes


def expected_encoder_shapes() -> dict[str, tuple[int, ...]]:
    """ss_enc_conv3d_16l8: channels [32, 128, 512], stride-2 conv downsampling."""
    shapes = {"input_layer.weight": (32, 1, 3, 3, 3), "input_layer.bias": (32,)}
    shapes |= resblock_shapes("blocks.0", 32) | resblock_shapes("blocks.1", 32)
    shapes |= {"blocks.2.conv.weight": (128, 32, 2, 2, 2), "blocks.2.conv.bias": (128,)}
    shapes |= resblock_shapes("blocks.3", 128) | resblock_shapes("blocks.4", 128)
    shapes |= {"blocks.5.conv.weight": (512, 128, 2, 2, 2), "blocks.5.conv.bias": (512,)}
    shapes |= resblock_shapes("blocks.6", 512) | resblock_shapes("blocks.7", 512)
    shapes |= resblock_shapes("middle_block.0", 512) | resblock_shapes("middle_block.1", 512)
    shapes |= {"out_layer.0.weight": (512,), "out_layer.0.bias": (512,),
               "out_layer.2.weight": (16, 512, 3, 3, 3), "out_layer.2.bias": (16,)}
    return shapes


def test_full_size_decoder_matches_trellis_state_dict():
    with torch.device("meta"):
        decoder = SparseStructureDecoder.from_settings(DecoderSettings(), dtype="fp16")
    got = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert got == expected_decoder_shapes()
    assert decoder.state_dict()["blocks.0.conv1.weight"].dtype == torch.float16
    assert decoder.state_dict()["blocks.0.norm1.weight"].dtype == torch.float32
    assert decoder.state_dict()["input_layer.weight"].dtype == torch.float32
    assert decoder.upsampling == 4


def test_full_size_encoder_matches_trellis_state_dict():
    with torch.device("meta"):
        encoder = SparseStructureEncoder.from_settings(EncoderSettings())
    got = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert got == expected_encoder_shapes()
    assert encoder.downsampling == 4


def test_pixel_shuffle_places_channels_as_trellis_does():
    x = torch.randn(2, 3 * 8, 2, 3, 4)
    y = pixel_shuffle_3d(x, 2)
    assert y.shape == (2, 3, 4, 6, 8)
    # output voxel (2d + i, 2h + j, 2w + k) of channel c comes from input channel c * 8 + i * 4 + j * 2 + k
    for c, d, h, w, i, j, k in [(0, 0, 0, 0, 0, 0, 0), (2, 1, 2, 3, 1, 0, 1), (1, 0, 1, 2, 1, 1, 1)]:
        assert y[1, c, 2 * d + i, 2 * h + j, 2 * w + k] == x[1, c * 8 + i * 4 + j * 2 + k, d, h, w]


def test_decoder_maps_16_cubed_latent_to_64_cubed_logits():
    decoder = SparseStructureDecoder(**TINY_DECODER).eval()
    randomize_(decoder, 0)
    z = torch.randn(1, 8, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = decoder(z)
    assert logits.shape == (1, 1, 64, 64, 64) and logits.dtype == torch.float32
    occupied = (logits > 0).float().mean()
    assert 0.0 < occupied < 1.0  # random weights give a mixed grid, not a constant


def test_decoder_treats_samples_independently():
    decoder = SparseStructureDecoder(**TINY_DECODER).eval()
    randomize_(decoder, 1)
    z = torch.randn(2, 8, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = decoder(z)
        torch.testing.assert_close(decoder(z[1:]), out[1:], atol=1e-5, rtol=1e-5)
        z2 = z.clone()
        z2[0, :, 0, 0, 0] += 5.0
        changed = (decoder(z2) - out).abs() > 1e-6
    assert not changed[1].any()  # other sample untouched
    assert changed[0, 0, :4, :4, :4].any()  # the voxels under the edited latent cell move


def test_encoder_gives_latent_mean_logvar_and_seeded_posterior():
    encoder = SparseStructureEncoder(**TINY_ENCODER).eval()
    randomize_(encoder, 2)
    occ = (torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    with torch.no_grad():
        z, mean, logvar = encoder(occ, return_raw=True)
        assert z.shape == mean.shape == logvar.shape == (2, 8, 4, 4, 4)
        torch.testing.assert_close(z, mean)
        s1 = encoder(occ, sample_posterior=True, generator=torch.Generator().manual_seed(7))
        s2 = encoder(occ, sample_posterior=True, generator=torch.Generator().manual_seed(7))
        s3 = encoder(occ, sample_posterior=True, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(s1, s2)
    assert not torch.allclose(s1, s3)
    # the sample is mean + std * eps with std = exp(logvar / 2)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(s1, mean + torch.exp(0.5 * logvar) * eps)


def test_vae_round_trip_shapes_and_training_step():
    encoder = SparseStructureEncoder(**TINY_ENCODER)
    decoder = SparseStructureDecoder(**TINY_DECODER)
    occ = (torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(3)) > 0.7).float()
    z, mean, logvar = encoder(occ, sample_posterior=True, return_raw=True)
    logits = decoder(z)
    assert logits.shape == occ.shape
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, occ) + 1e-3 * (mean**2 + logvar.exp() - logvar).mean()
    loss.backward()
    assert encoder.input_layer.weight.grad is not None and decoder.out_layer[2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_decoder_runs_on_cpu(dtype):
    ref = SparseStructureDecoder(**TINY_DECODER).eval()
    randomize_(ref, 4)
    half = SparseStructureDecoder(**TINY_DECODER, dtype=dtype).eval()
    half.load_state_dict(ref.state_dict())
    assert half.blocks[0].conv1.weight.dtype != torch.float32  # load keeps the torso dtype
    z = torch.randn(1, 8, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = ref(z), half(z)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).norm() / a.norm() < 0.05


def test_group_norm_variant_and_bad_settings():
    decoder = SparseStructureDecoder(**(TINY_DECODER | {"channels": [64, 32], "norm_type": "group"}))
    assert isinstance(decoder.blocks[0].norm1, torch.nn.GroupNorm) and decoder.blocks[0].norm1.num_groups == 32
    with torch.no_grad():
        assert decoder(torch.randn(1, 8, 2, 2, 2)).shape == (1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="divisible by 32"):
        SparseStructureDecoder(**(TINY_DECODER | {"norm_type": "group"}))
    with pytest.raises(ValueError, match="norm_type"):
        SparseStructureDecoder(**(TINY_DECODER | {"norm_type": "batch"}))
    with pytest.raises(ValueError, match="expected \\[B, 8"):
        SparseStructureDecoder(**TINY_DECODER)(torch.randn(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match="not divisible"):
        SparseStructureEncoder(**TINY_ENCODER)(torch.randn(1, 1, 6, 6, 6))
