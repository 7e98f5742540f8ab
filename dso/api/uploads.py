"""Streaming multipart reader for image uploads, with limits enforced while the body arrives.

Why not FastAPI's ``UploadFile``: Starlette spools the whole body to disk before
the handler sees it, so a 10 GB upload would be written out before being refused.
Here the body is parsed chunk by chunk (python-multipart's streaming parser) and
the request is refused the moment it passes a limit: ``Content-Length`` above the
request limit (before reading anything), a part above ``max_upload_bytes``, more
than ``max_files_per_request`` parts, or a field other than ``images``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from dso.api.errors import ApiError
from dso.config import ApiSettings

IMAGES_FIELD = "images"
MAX_FILENAME = 255


@dataclass
class UploadedPart:
    """One file part of the request, fully read (bounded by ``max_upload_bytes``)."""

    filename: str | None
    content_type: str | None
    data: bytearray = field(default_factory=bytearray)

    @property
    def label(self) -> str:
        """How error messages name this part."""
        return f"file {self.filename!r}" if self.filename else "an unnamed part"


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int
    max_files: int
    max_request_bytes: int

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> UploadLimits:
        return cls(
            max_file_bytes=settings.max_upload_bytes,
            max_files=settings.max_files_per_request,
            max_request_bytes=settings.max_upload_bytes * settings.max_files_per_request
            + settings.multipart_overhead_bytes,
        )


def _boundary(content_type: str | None) -> bytes:
    mime, params = parse_options_header(content_type or "")
    if mime != b"multipart/form-data":
        shown = content_type or "none"
        raise ApiError(415, f"expected a multipart/form-data body with images in the '{IMAGES_FIELD}' field, got content type {shown}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(422, "multipart/form-data content type has no boundary parameter")
    return boundary


class _PartCollector:
    """python-multipart callbacks that build UploadedParts and enforce the per-part limits."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.parts: list[UploadedPart] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._current: UploadedPart | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._current = None

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", b""))
        if disposition != b"form-data":
            raise ApiError(422, "every multipart part needs a 'Content-Disposition: form-data' header")
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name != IMAGES_FIELD:
            shown = name or "(no name)"
            raise ApiError(422, f"unexpected form field {shown!r}: send images in the '{IMAGES_FIELD}' field")
        if len(self.parts) >= self.limits.max_files:
            raise ApiError(422, f"too many files: at most {self.limits.max_files} images per request")
        raw_name = params.get(b"filename")
        filename = raw_name.decode("utf-8", "replace")[:MAX_FILENAME] if raw_name is not None else None
        content_type = self._headers.get("content-type")
        self._current = UploadedPart(filename, content_type.decode("latin-1")[:MAX_FILENAME] if content_type else None)
        self.parts.append(self._current)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None:
            return
        if len(part.data) + (end - start) > self.limits.max_file_bytes:
            raise ApiError(413, f"{part.label} is larger than the limit of {self.limits.max_file_bytes} bytes")
        part.data.extend(data[start:end])


async def read_image_parts(
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    limits: UploadLimits,
) -> list[UploadedPart]:
    """Parse a multipart body into its ``images`` parts, refusing it as soon as a limit is passed."""
    boundary = _boundary(content_type)
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(422, f"invalid Content-Length header {content_length!r}") from None
        if declared > limits.max_request_bytes:
            raise ApiError(
                413, f"request body of {declared} bytes is larger than the limit of {limits.max_request_bytes} bytes"
            )
    collector = _PartCollector(limits)
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - e.g. an overlong boundary
        raise ApiError(422, f"malformed multipart body: {exc}") from exc
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise ApiError(413, f"request body is larger than the limit of {limits.max_request_bytes} bytes")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(422, f"malformed multipart body: {exc}") from exc
    if received == 0:
        raise ApiError(422, f"empty request body: send one or more images in the '{IMAGES_FIELD}' field")
    if parser.state not in (MultipartState.END, MultipartState.BOUNDARY_PADDING):
        raise ApiError(422, "malformed multipart body: it ends before the closing boundary (truncated upload?)")
    if not collector.parts:
        raise ApiError(422, f"no images in the request: send one or more files in the '{IMAGES_FIELD}' field")
    return collector.parts
