"""Validation of uploaded prompt images: which failure gets which HTTP status.

Decoding is ``dso.models.image_io.load_image`` (Pillow verify, declared-size bomb
guard before decoding, full decode so truncation is caught); this module only
maps its errors to statuses: limits -> 413, not an accepted image format -> 415,
corrupt, empty or smaller than ``api.min_image_side`` -> 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from dso.api.errors import ApiError
from dso.api.uploads import UploadedPart
from dso.config import ApiSettings
from dso.models.image_io import ImageTooLargeError, InvalidImageError, UnsupportedImageError, load_image

CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


def sniff_content_type(data: bytes) -> str:
    """The media type of stored image bytes (for prompts stored without one, e.g. the loop's defaults)."""
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


@dataclass(frozen=True)
class ValidatedImage:
    """An upload that decodes as an accepted image, with what we record about it."""

    data: bytes
    filename: str | None
    format: str
    width: int
    height: int
    mode: str
    has_alpha: bool

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.format, "application/octet-stream")

    def metadata(self) -> dict[str, Any]:
        return {
            "source": "api",
            "filename": self.filename,
            "format": self.format,
            "content_type": self.content_type,
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "has_alpha": self.has_alpha,
            "bytes": len(self.data),
        }


def validate_image(part: UploadedPart, settings: ApiSettings) -> ValidatedImage:
    """Decode one uploaded part or raise an ApiError (413 / 415 / 422) naming the file and the reason."""
    data = bytes(part.data)
    if not data:
        raise ApiError(422, f"{part.label} is empty")
    try:
        image = load_image(
            data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_upload_bytes, formats=settings.image_formats
        )
    except ImageTooLargeError as exc:
        setting = "api.max_image_pixels" if "pixels" in str(exc) else "api.max_upload_bytes"
        raise ApiError(413, f"{part.label}: {_reason(exc)} ({setting})") from exc
    except UnsupportedImageError as exc:
        raise ApiError(
            415, f"{part.label}: {_reason(exc)}; accepted formats: {', '.join(settings.image_formats)}"
        ) from exc
    except InvalidImageError as exc:
        raise ApiError(422, f"{part.label}: {_reason(exc)}") from exc
    if min(image.width, image.height) < settings.min_image_side:
        raise ApiError(
            422,
            f"{part.label}: {image.width}x{image.height} pixels is smaller than the minimum of "
            f"{settings.min_image_side} pixels a side (api.min_image_side)",
        )
    has_alpha = _has_transparency(image)
    return ValidatedImage(
        data=data,
        filename=part.filename,
        format=str(image.format),
        width=image.width,
        height=image.height,
        mode=image.mode,
        has_alpha=has_alpha,
    )


def _has_transparency(image: Image.Image) -> bool:
    """True when some pixel is not fully opaque (the alpha mask the conditioner crops by is kept)."""
    if "A" in image.getbands():
        return image.getchannel("A").getextrema()[0] < 255
    return image.mode == "P" and "transparency" in image.info


def _reason(exc: InvalidImageError) -> str:
    """load_image's message without its '<bytes>: ' source prefix."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("<bytes>: ") else text
