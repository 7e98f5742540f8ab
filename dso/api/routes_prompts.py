"""Prompt endpoints: upload (multipart, streamed, validated, idempotent), list, get, image, retire."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from dso.api.deps import ApiContext, get_context, require_read, require_write
from dso.api.errors import ApiError
from dso.api.http_cache import cache_control, matches, not_modified, quoted
from dso.api.images import CONTENT_TYPES, ValidatedImage, sniff_content_type, validate_image
from dso.api.schemas import (
    PROMPT_ID_PATTERN,
    PromptInfo,
    PromptMetadata,
    PromptPage,
    PromptStability,
    RetireResponse,
    UploadedPrompt,
    UploadResponse,
    error_responses,
)
from dso.api.uploads import IMAGES_FIELD, UploadLimits, read_image_parts
from dso.broker.prompts import UnknownPromptError

router = APIRouter(prefix="/v1/prompts", tags=["prompts"])
PromptId = Annotated[str, Path(pattern=PROMPT_ID_PATTERN, description="sha256 of the image bytes")]


def _upload_body_schema() -> dict[str, Any]:
    """The multipart body (maxItems is filled in from the settings by create_app)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [IMAGES_FIELD],
                        "properties": {
                            IMAGES_FIELD: {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "minItems": 1,
                                "description": "PNG, JPEG or WebP images (RGBA keeps its alpha mask)",
                            }
                        },
                    },
                    "encoding": {IMAGES_FIELD: {"contentType": ", ".join(CONTENT_TYPES.values())}},
                }
            },
        }
    }


@router.post(
    "",
    response_model=UploadResponse,
    status_code=201,
    summary="Upload prompt images",
    description=(
        "Send one or more images as multipart/form-data in the `images` field. All images are validated "
        "before any is stored: one bad file refuses the whole request and stores nothing. The id is the "
        "image's sha256, so re-uploading returns the same id (200 when nothing was new, 201 otherwise). "
        "Generators pick new prompts up at their next batch."
    ),
    responses={200: {"model": UploadResponse, "description": "Every image was stored before"}}
    | error_responses(401, 413, 415, 422, 503),
    openapi_extra=_upload_body_schema(),
    dependencies=[Depends(require_write)],
)
async def upload_prompts(request: Request, ctx: ApiContext = Depends(get_context)) -> JSONResponse:
    try:
        parts = await read_image_parts(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            UploadLimits.from_settings(ctx.settings),
        )
        images = await run_in_threadpool(lambda: [validate_image(part, ctx.settings) for part in parts])
    except ApiError:
        ctx.metrics.prompt_uploads.labels("rejected").inc()
        raise
    stored = await run_in_threadpool(_store, ctx, images)
    created = sum(p.created for p in stored)
    body = UploadResponse(prompts=stored, created=created, duplicates=len(stored) - created)
    return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)


def _store(ctx: ApiContext, images: list[ValidatedImage]) -> list[UploadedPrompt]:
    out = []
    for image in images:
        added = ctx.broker.prompts.add(image.data, image.metadata())
        ctx.metrics.prompt_uploads.labels("created" if added.created else "duplicate").inc()
        out.append(
            UploadedPrompt(
                id=added.prompt_id,
                created=added.created,
                filename=image.filename,
                format=image.format,
                width=image.width,
                height=image.height,
                mode=image.mode,
                has_alpha=image.has_alpha,
                bytes=len(image.data),
            )
        )
    return out


def _prompt_infos(ctx: ApiContext, prompt_ids: list[str]) -> list[PromptInfo]:
    """Metadata without the image bytes, in one round trip, plus each prompt's verdict counts."""
    summaries = ctx.broker.prompts.summaries(prompt_ids)
    stability = ctx.prompt_stats.get_many(prompt_ids)
    out = []
    for summary, counts in zip(summaries, stability, strict=True):
        if summary is None:
            continue  # vanished between listing and reading
        prompt_id = summary.prompt_id
        out.append(
            PromptInfo(
                id=prompt_id,
                active=summary.active,
                created_at=summary.created_at,
                metadata=PromptMetadata.model_validate(summary.metadata),
                stability=PromptStability(**counts),
                image_url=f"/v1/prompts/{prompt_id}/image",
            )
        )
    return out


@router.get(
    "",
    response_model=PromptPage,
    summary="List prompts (paginated, oldest first)",
    responses=error_responses(401, 422, 503),
    dependencies=[Depends(require_read)],
)
def list_prompts(
    status: Literal["active", "all"] = Query("active", description="active prompts only, or retired ones too"),
    offset: int = Query(0, ge=0),
    limit: int | None = Query(None, ge=1, description="page size (default api.default_page_size, at most api.max_page_size)"),
    ctx: ApiContext = Depends(get_context),
) -> PromptPage:
    size = ctx.settings.default_page_size if limit is None else limit
    if size > ctx.settings.max_page_size:
        raise ApiError(422, f"limit must be at most {ctx.settings.max_page_size}, got {size}")
    ids = ctx.broker.prompts.active() if status == "active" else ctx.broker.prompts.all()
    page = ids[offset : offset + size]
    next_offset = offset + size if offset + size < len(ids) else None
    return PromptPage(items=_prompt_infos(ctx, page), total=len(ids), offset=offset, limit=size, next_offset=next_offset)


def _one(ctx: ApiContext, prompt_id: str) -> PromptInfo:
    infos = _prompt_infos(ctx, [prompt_id])
    if not infos:
        raise ApiError(404, f"no prompt with id {prompt_id}")
    return infos[0]


@router.get(
    "/{prompt_id}",
    response_model=PromptInfo,
    summary="A prompt's metadata and its own stability rate",
    responses=error_responses(401, 404, 422, 503),
    dependencies=[Depends(require_read)],
)
def get_prompt(prompt_id: PromptId, ctx: ApiContext = Depends(get_context)) -> PromptInfo:
    return _one(ctx, prompt_id)


@router.get(
    "/{prompt_id}/image",
    summary="The prompt image as uploaded",
    response_class=Response,
    responses={
        200: {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in CONTENT_TYPES.values()},
              "description": "The image bytes; ETag is the prompt id"},
    }
    | error_responses(304, 401, 404, 422, 503),
    dependencies=[Depends(require_read)],
)
def get_prompt_image(
    prompt_id: PromptId,
    if_none_match: str | None = Header(None),
    ctx: ApiContext = Depends(get_context),
) -> Response:
    etag = quoted(prompt_id)
    control = cache_control(private=ctx.settings.require_auth_for_reads, immutable=True)
    if not ctx.broker.prompts.exists(prompt_id):
        raise ApiError(404, f"no prompt with id {prompt_id}")
    if matches(if_none_match, etag):
        return not_modified(etag, control)
    try:
        prompt = ctx.broker.prompts.get(prompt_id)
    except UnknownPromptError:
        raise ApiError(404, f"no prompt with id {prompt_id}") from None
    media_type = prompt.metadata.get("content_type") or sniff_content_type(prompt.image)
    return Response(prompt.image, media_type=media_type, headers={"ETag": etag, "Cache-Control": control})


@router.delete(
    "/{prompt_id}",
    response_model=RetireResponse,
    summary="Retire a prompt from sampling (its bytes and statistics stay)",
    responses=error_responses(401, 404, 422, 503),
    dependencies=[Depends(require_write)],
)
def retire_prompt(prompt_id: PromptId, ctx: ApiContext = Depends(get_context)) -> RetireResponse:
    try:
        was_active = ctx.broker.prompts.retire(prompt_id)
    except UnknownPromptError:
        raise ApiError(404, f"no prompt with id {prompt_id}") from None
    return RetireResponse(id=prompt_id, retired=was_active)
