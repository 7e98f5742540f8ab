"""Prompt images: safe loading and TRELLIS's framing of the object.

Why this module exists: every conditioner must see an object framed the same
way TRELLIS frames it (``TrellisImageTo3DPipeline.preprocess_image``), and
user-supplied bytes must be refused cleanly before they reach a model.

Framing, as in TRELLIS:

1. the bounding box of pixels with ``alpha > alpha_threshold * 255``;
2. a square of side ``int(max(w, h) * crop_margin)`` around the box centre
   (pixels outside the frame become transparent black);
3. a Lanczos resize to ``size x size``;
4. RGB premultiplied by alpha (black background), quantised to 8 bits.

Note on images without transparency: TRELLIS cuts the background out of such
images with ``rembg``. We do not ship ``rembg``. An image without an alpha
channel (RGB, L, CMYK, P without a transparent colour), or an RGBA image whose
alpha is 255 everywhere, is treated as fully opaque: the whole frame is the
object, nothing is cropped, and a non-square frame is padded to a square
(transparent black, centred) so the aspect ratio survives the resize. Cut the background
out beforehand if you want TRELLIS's behaviour for photos.
"""

from __future__ import annotations

import io
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dso.config import ConditionerSettings

_DEFAULTS = ConditionerSettings()


class InvalidImageError(ValueError):
    """The input is not a usable image (corrupt, not an image, too large, or empty)."""


class ImageTooLargeError(InvalidImageError):
    """The input exceeds a byte or pixel limit (including decompression bombs)."""


class UnsupportedImageError(InvalidImageError):
    """The input is not an image Pillow recognises, or its format is not one of those allowed."""


@dataclass(frozen=True)
class CropBox:
    """A crop rectangle in PIL's (left, upper, right, lower) convention; may extend past the frame."""

    left: float
    upper: float
    right: float
    lower: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.left, self.upper, self.right, self.lower)


def load_image(
    source: str | Path | bytes | bytearray,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
    formats: Collection[str] | None = None,
) -> Image.Image:
    """Decode an image file or its bytes, refusing corrupt input and decompression bombs.

    The file is checked with Pillow's ``verify`` first, its declared size is
    compared with ``max_pixels`` before any pixel is decoded, and then it is
    decoded fully, so truncated files fail here and not later inside a model.
    ``formats`` (Pillow names such as ``"PNG"``) restricts which formats are accepted.
    Errors are ``ImageTooLargeError`` (limits), ``UnsupportedImageError`` (not an
    image / format not allowed) or plain ``InvalidImageError`` (corrupt, empty).
    """
    max_pixels = _DEFAULTS.max_image_pixels if max_pixels is None else max_pixels
    max_bytes = _DEFAULTS.max_image_bytes if max_bytes is None else max_bytes
    name = "<bytes>"
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        name = str(source)
        path = Path(source)
        if not path.is_file():
            raise InvalidImageError(f"{name}: no such image file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLargeError(f"{name}: file is {size} bytes, more than the limit of {max_bytes}")
        data = path.read_bytes()
    else:
        raise TypeError(f"load_image expects a path or bytes, got {type(source).__name__}")
    if len(data) == 0:
        raise InvalidImageError(f"{name}: empty input")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{name}: {len(data)} bytes, more than the limit of {max_bytes}")

    allowed = None if formats is None else {f.upper() for f in formats}
    try:
        with Image.open(io.BytesIO(data), formats=sorted(allowed) if allowed is not None else None) as probe:
            probe.verify()
    except Image.DecompressionBombError as exc:
        raise _bomb(name, exc, max_pixels) from exc
    except UnidentifiedImageError as exc:
        detected = _sniff_format(data)
        if allowed is not None and detected is not None and detected not in allowed:
            raise UnsupportedImageError(
                f"{name}: {detected} images are not accepted (allowed: {', '.join(sorted(allowed))})"
            ) from exc
        known = "PNG, JPEG, WebP" if allowed is None else ", ".join(sorted(allowed))
        raise UnsupportedImageError(f"{name}: not a readable image (expected an image file such as {known})") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt files
        raise InvalidImageError(f"{name}: corrupt image ({type(exc).__name__}: {exc})") from exc

    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"{name}: image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{name}: {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
            )
        image.load()
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(name, exc, max_pixels) from exc
    except Exception as exc:  # noqa: BLE001
        raise InvalidImageError(f"{name}: corrupt image ({type(exc).__name__}: {exc})") from exc
    return image


_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")


def _bomb(name: str, exc: Exception, max_pixels: int) -> ImageTooLargeError:
    """Pillow's own bomb guard fired first: say *our* limit, not Pillow's (which the caller never set)."""
    declared = _PILLOW_PIXELS.search(str(exc))
    size = f"declares {declared.group(1)} pixels" if declared else "declares too many pixels"
    return ImageTooLargeError(
        f"{name}: {size}, more than the limit of {max_pixels}; refused as a decompression bomb before decoding"
    )


def _sniff_format(data: bytes) -> str | None:
    """The Pillow format name of an image whatever the allow-list, or None if Pillow knows none."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.format
    except Exception:  # noqa: BLE001 - only used to word an error message
        return None


def to_rgba(image: Image.Image) -> tuple[Image.Image, bool]:
    """Return ``(rgba_image, has_transparency)``.

    ``has_transparency`` is False for modes without alpha and for an alpha
    channel that is 255 everywhere (TRELLIS's own test for "has alpha").
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    if image.width <= 0 or image.height <= 0:
        raise InvalidImageError(f"image has no pixels ({image.width}x{image.height})")
    carries_alpha = image.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    try:
        rgba = image.convert("RGBA") if image.mode != "RGBA" else image
    except Exception as exc:  # noqa: BLE001 - exotic modes Pillow cannot convert
        raise InvalidImageError(f"cannot convert image mode {image.mode!r} to RGBA ({exc})") from exc
    if not carries_alpha:
        return rgba, False
    alpha = np.asarray(rgba.getchannel("A"))
    return rgba, not bool(np.all(alpha == 255))


def object_crop_box(alpha: np.ndarray, alpha_threshold: float, margin: float) -> CropBox:
    """TRELLIS's square crop around the pixels whose alpha exceeds the threshold.

    ``alpha`` is an ``[H, W]`` uint8 array. Raises ``InvalidImageError`` when no
    pixel passes the threshold (an all-transparent image has no object).
    """
    if alpha.ndim != 2:
        raise ValueError(f"alpha must be a 2-D array, got shape {alpha.shape}")
    rows, cols = np.nonzero(alpha > alpha_threshold * 255)
    if rows.size == 0:
        if not alpha.any():
            raise InvalidImageError("image is fully transparent (alpha is 0 everywhere): there is no object to crop")
        raise InvalidImageError(
            f"no pixel is opaque enough to be the object: max alpha {int(alpha.max())} is not above "
            f"{alpha_threshold} * 255; make the object opaque or lower alpha_threshold"
        )
    x0, y0, x1, y1 = int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    side = int(max(x1 - x0, y1 - y0) * margin)
    half = side // 2
    return CropBox(centre_x - half, centre_y - half, centre_x + half, centre_y + half)


def _pad_to_square(image: Image.Image) -> Image.Image:
    """Centre a non-square opaque image on a transparent black square, keeping its aspect ratio."""
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def frame_object(image: Image.Image, size: int, alpha_threshold: float, margin: float) -> np.ndarray:
    """Frame the object as TRELLIS does and return ``[size, size, 4]`` uint8: premultiplied RGB + alpha.

    See the module docstring for the steps and for images without transparency.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    rgba, has_transparency = to_rgba(image)
    if has_transparency:
        box = object_crop_box(np.asarray(rgba.getchannel("A")), alpha_threshold, margin)
        framed = rgba.crop(box.as_tuple())
    else:
        framed = _pad_to_square(rgba)
    framed = framed.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(framed).astype(np.float32) / 255
    alpha = pixels[:, :, 3:4]
    premultiplied = (pixels[:, :, :3] * alpha * 255).astype(np.uint8)  # TRELLIS truncates to uint8
    return np.concatenate([premultiplied, (alpha * 255).round().astype(np.uint8)], axis=-1)
