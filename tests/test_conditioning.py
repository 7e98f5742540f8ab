"""Image conditioning: TRELLIS framing, DINOv2-with-registers tokens, the tiny encoder, safe loading."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from dso.config import ConditionerSettings
from dso.models.conditioning import (
    Dinov2Conditioner,
    TinyConditioner,
    TinyImageEncoder,
    build_conditioner,
    prepare_pixels,
)
from dso.models.image_io import InvalidImageError, frame_object, load_image, object_crop_box

IMAGE_SIZE = 126  # 9 x 9 patches of 14 px (TRELLIS: 518 -> 37 x 37)
PATCH = 14
REGISTERS = 4
HIDDEN = 32


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    """A tiny random DINOv2-with-registers saved like a downloaded checkpoint folder."""
    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        num_register_tokens=REGISTERS,
    )
    model = Dinov2WithRegistersModel(config)
    with torch.no_grad():  # a non-trivial final norm, so pre-norm and post-norm features differ
        model.layernorm.weight.uniform_(0.5, 2.0)
        model.layernorm.bias.normal_()
        model.embeddings.register_tokens.normal_()
    path = tmp_path_factory.mktemp("dinov2")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dinov2(dinov2_dir) -> Dinov2Conditioner:
    conditioner = build_conditioner(ConditionerSettings(path=dinov2_dir, image_size=IMAGE_SIZE))
    assert isinstance(conditioner, Dinov2Conditioner)
    return conditioner


def corner_object(size=(200, 160), box=(20, 10, 50, 40), colour=(200, 60, 30)) -> Image.Image:
    """Transparent canvas with an opaque square near the top-left corner; box = (x0, y0, x1, y1) exclusive."""
    pixels = np.zeros((size[1], size[0], 4), np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = (*colour, 255)
    return Image.fromarray(pixels, "RGBA")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- framing -------------------------------------------------------------------


def test_crop_box_follows_trellis_rule():
    alpha = np.asarray(corner_object().getchannel("A"))
    box = object_crop_box(alpha, 0.8, 1.2)
    # pixels x 20..49, y 10..39: centre (34.5, 24.5), side int(29 * 1.2) = 34, half 17
    assert box.as_tuple() == (17.5, 7.5, 51.5, 41.5)


def test_object_in_a_corner_is_centred_after_framing():
    framed = frame_object(corner_object(), 64, 0.8, 1.2)
    assert framed.shape == (64, 64, 4) and framed.dtype == np.uint8
    rows, cols = np.nonzero(framed[:, :, 3] > 128)
    assert abs((rows.min() + rows.max()) / 2 - 31.5) <= 1.5
    assert abs((cols.min() + cols.max()) / 2 - 31.5) <= 1.5
    extent = rows.max() - rows.min() + 1
    assert 64 / 1.2 - 4 <= extent <= 64 / 1.2 + 4  # the 1.2 margin around the object
    assert framed[:3, :3, 3].max() == 0 and framed[:3, :3, :3].max() == 0  # black, transparent margin


def test_rgb_is_premultiplied_by_alpha():
    pixels = np.zeros((100, 100, 4), np.uint8)
    pixels[:, :] = (200, 100, 50, 128)  # translucent everywhere
    pixels[40:60, 40:60, 3] = 255  # the object
    framed = frame_object(Image.fromarray(pixels, "RGBA"), 64, 0.8, 1.2)
    corner = framed[0, 0].astype(int)  # translucent region inside the crop
    expected = np.floor(np.array([200, 100, 50]) * (128 / 255)).astype(int)
    assert np.abs(corner[:3] - expected).max() <= 1
    assert abs(corner[3] - 128) <= 1
    assert np.abs(framed[32, 32, :3].astype(int) - [200, 100, 50]).max() <= 1


def test_opaque_images_are_used_whole_and_padded_square():
    rgb = Image.new("RGB", (120, 60), (10, 200, 30))
    framed = frame_object(rgb, 60, 0.8, 1.2)
    assert framed[:, :, 3][:12].max() == 0 and framed[:, :, 3][-12:].max() == 0  # padding rows
    assert framed[20:40, :, 3].min() == 255  # the whole frame is kept
    assert np.abs(framed[30, 30, :3].astype(int) - [10, 200, 30]).max() <= 1
    fully_opaque_rgba = frame_object(rgb.convert("RGBA"), 60, 0.8, 1.2)
    assert np.array_equal(fully_opaque_rgba, framed)


def test_other_modes_are_accepted():
    grey = Image.new("L", (50, 50), 128)
    assert frame_object(grey, 32, 0.8, 1.2)[:, :, 3].min() == 255
    la = corner_object().convert("LA")
    # the alpha of LA is honoured: same crop as the RGBA original
    assert np.array_equal(frame_object(la, 32, 0.8, 1.2)[:, :, 3], frame_object(corner_object(), 32, 0.8, 1.2)[:, :, 3])
    palette = corner_object().convert("RGB").convert("P")
    palette.info["transparency"] = 0  # index 0: the black background
    assert frame_object(palette, 32, 0.8, 1.2)[0, 0, 3] == 0


def test_fully_transparent_image_is_refused():
    with pytest.raises(InvalidImageError, match="fully transparent"):
        frame_object(Image.new("RGBA", (40, 40), (255, 0, 0, 0)), 32, 0.8, 1.2)
    with pytest.raises(InvalidImageError, match="opaque enough"):
        frame_object(Image.new("RGBA", (40, 40), (255, 0, 0, 100)), 32, 0.8, 1.2)


# --- loading -------------------------------------------------------------------


def test_load_image_reads_png_files_and_bytes(tmp_path):
    data = png_bytes(corner_object())
    path = tmp_path / "ok.png"
    path.write_bytes(data)
    for source in (path, str(path), data):
        image = load_image(source)
        assert image.size == (200, 160) and image.mode == "RGBA"


def test_text_file_renamed_png_is_invalid(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(InvalidImageError, match="notes.png"):
        load_image(path)


def test_truncated_empty_missing_and_oversized_inputs_are_invalid(tmp_path):
    data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    with pytest.raises(InvalidImageError):
        load_image(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(b"")
    with pytest.raises(InvalidImageError, match="no such"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match="pixels"):
        load_image(data, max_pixels=64 * 63)  # decompression-bomb guard on the declared size
    with pytest.raises(InvalidImageError, match="bytes"):
        load_image(data, max_bytes=len(data) - 1)
    with pytest.raises(TypeError):
        load_image(123)  # type: ignore[arg-type]


# --- DINOv2 -----------------------------------------------------------------------


def test_dinov2_tokens_have_trellis_shape_and_are_layer_normed(dinov2):
    images = [corner_object(), Image.new("RGB", (80, 90), (90, 90, 200))]
    tokens = dinov2.encode(images)
    grid = IMAGE_SIZE // PATCH
    assert tokens.shape == (2, 1 + REGISTERS + grid * grid, HIDDEN)
    assert dinov2.token_count == tokens.shape[1] and dinov2.dim == HIDDEN
    assert tokens.mean(-1).abs().max() < 1e-4
    # ~1 (layer_norm's eps pulls low-variance tokens, like a near-zero CLS at random init, slightly under 1)
    assert (tokens.std(-1, unbiased=False) - 1).abs().max() < 1e-2
    assert not torch.allclose(tokens[0], tokens[1])


def test_dinov2_features_are_taken_before_the_final_norm(dinov2):
    images = [corner_object()]
    pixels = prepare_pixels(images, IMAGE_SIZE, dinov2.settings)
    with torch.no_grad():
        hidden = dinov2.model.embeddings(pixels)
        for layer in dinov2.model.encoder.layer:
            hidden = layer(hidden)
        post_norm = dinov2.model.layernorm(hidden)
        public = dinov2.model(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(public.hidden_states[-1], hidden)  # same features via the public API
    torch.testing.assert_close(public.last_hidden_state, post_norm)
    tokens = dinov2.encode(images)
    torch.testing.assert_close(tokens, F.layer_norm(hidden, hidden.shape[-1:]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tokens, F.layer_norm(post_norm, post_norm.shape[-1:]), atol=1e-3)


def test_dinov2_pixels_are_imagenet_normalised(dinov2):
    pixels = prepare_pixels([corner_object()], IMAGE_SIZE, dinov2.settings)
    background = pixels[0, :, 0, 0]  # black premultiplied margin
    expected = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(background, expected)


def test_unconditional_branch_is_zeros_like_the_condition(dinov2):
    zeros = dinov2.unconditional(3)
    assert zeros.shape == (3, dinov2.token_count, dinov2.dim) and not zeros.any()
    assert zeros.dtype == dinov2.dtype


def test_dinov2_needs_a_local_folder(tmp_path):
    with pytest.raises(ValueError, match="path"):
        build_conditioner(ConditionerSettings(kind="dinov2"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_conditioner(ConditionerSettings(kind="dinov2", path=tmp_path))


def test_dinov2_rejects_image_size_off_the_patch_grid(dinov2_dir):
    with pytest.raises(ValueError, match="patch size"):
        Dinov2Conditioner(ConditionerSettings(path=dinov2_dir, image_size=130))


# --- tiny encoder ------------------------------------------------------------------


def test_tiny_encoder_shapes_and_gradient_flow():
    torch.manual_seed(0)
    settings = ConditionerSettings(kind="tiny", tiny_image_size=32, tiny_channels=24, tiny_widths=[8, 16])
    conditioner = build_conditioner(settings)
    assert isinstance(conditioner, TinyConditioner)
    assert conditioner.token_count == (32 // 4) ** 2 and conditioner.dim == 24
    tokens = conditioner.encode([corner_object(), Image.new("RGB", (40, 30), (255, 255, 255))])
    assert tokens.shape == (2, 64, 24)
    assert (tokens.std(-1, unbiased=False) - 1).abs().max() < 1e-3
    tokens.square().mul(torch.linspace(0, 1, 24)).sum().backward()
    for name, param in conditioner.encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_tiny_encoder_default_size_and_state_dict_round_trip():
    settings = ConditionerSettings(kind="tiny")
    encoder = TinyImageEncoder.from_settings(settings)
    assert encoder.token_count == 64 and encoder.channels == settings.tiny_channels
    clone = TinyImageEncoder.from_settings(settings)
    clone.load_state_dict(encoder.state_dict())
    pixels = TinyConditioner(encoder, settings).prepare([corner_object()])
    assert pixels.shape == (1, 4, 64, 64)
    torch.testing.assert_close(clone(pixels), encoder(pixels))
    assert build_conditioner(settings, tiny_encoder=encoder).encoder is encoder


def test_tiny_encoder_rejects_bad_input():
    encoder = TinyImageEncoder(32, 16, [8, 8])
    with pytest.raises(ValueError, match="expected pixels"):
        encoder(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        TinyImageEncoder(30, 16, [8, 8])
    with pytest.raises(TypeError, match="list of images"):
        prepare_pixels(corner_object(), 32, ConditionerSettings())  # type: ignore[arg-type]
