"""Adapter endpoints: versions with manifests and canary scores, single-file and archive downloads with strong ETags.

``latest`` is the *promoted* version (``broker.promotion``), not the newest publish: a candidate the
canary has not passed is never what a client gets by asking for "latest", the same rule generators follow.

Every download is checked against its manifest once per version and process
(``AdapterStore.verify``), so a corrupted file is refused, never served. The
files are PEFT's own (``adapter_config.json``, ``adapter_model.safetensors``):
``peft.PeftModel.from_pretrained(base, folder)`` loads a downloaded folder as is.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from dso.api.archive import ARCHIVE_MEMBERS
from dso.api.deps import ApiContext, get_context, require_read
from dso.api.errors import ApiError
from dso.api.http_cache import cache_control, matches, not_modified, quoted
from dso.api.schemas import AdapterFile, AdapterInfo, AdapterList, CanaryResult, error_responses
from dso.broker.adapter_store import ADAPTER_WEIGHTS, AdapterIntegrityError, AdapterStoreError, sha256_file
from dso.broker.promotion import CanaryRecord

router = APIRouter(prefix="/v1/adapters", tags=["adapters"], dependencies=[Depends(require_read)])
VersionRef = Annotated[
    str,
    Path(pattern=r"^(latest|[1-9][0-9]{0,8})$", description="a version number, or 'latest' (the promoted version)",
         examples=["latest", "3"]),
]
FileName = Literal["adapter_config.json", "adapter_model.safetensors", "manifest.json"]
MEDIA_TYPES = {".json": "application/json", ".safetensors": "application/octet-stream"}


def _resolve(ctx: ApiContext, ref: str) -> int:
    store = ctx.broker.adapters
    if ref == "latest":
        version = ctx.broker.promotion.promoted()
        if version == 0:
            published = store.versions()
            if not published:
                raise ApiError(404, "no adapter has been published yet (generators use the base model, version 0)")
            raise ApiError(404, f"no adapter has been promoted yet: {len(published)} published, none passed the "
                                "canary so far (generators use the base model, version 0)")
        return version
    version = int(ref)
    if version not in store.versions():
        raise ApiError(404, f"adapter version {version} is not published")
    return version


def _verified_dir(ctx: ApiContext, version: int) -> tuple[FsPath, str]:
    """The version's folder and weights sha256, integrity-checked once per (version, sha) and process."""
    store = ctx.broker.adapters
    try:
        manifest = store.manifest(version)
        key = (version, manifest.sha256)
        directory = store.path(version, verify=key not in ctx.verified_adapters)
    except AdapterIntegrityError as exc:
        raise ApiError(500, f"adapter version {version} failed its integrity check and is not served: {exc}") from exc
    except AdapterStoreError as exc:
        raise ApiError(404, str(exc)) from exc
    ctx.verified_adapters.add(key)
    return directory, manifest.sha256


def _file_sha(directory: FsPath, name: str, weights_sha: str) -> str:
    return weights_sha if name == ADAPTER_WEIGHTS else sha256_file(directory / name)


def _canary(record: CanaryRecord | None) -> CanaryResult | None:
    return CanaryResult.model_validate(record.model_dump(exclude={"version"})) if record is not None else None


def _info(ctx: ApiContext, version: int, latest: int | None, promoted: int, record: CanaryRecord | None) -> AdapterInfo:
    directory, weights_sha = _verified_dir(ctx, version)
    files = [
        AdapterFile(
            name=name,
            size=(directory / name).stat().st_size,
            sha256=_file_sha(directory, name, weights_sha),
            url=f"/v1/adapters/{version}/files/{name}",
        )
        for name in ARCHIVE_MEMBERS
    ]
    return AdapterInfo(
        version=version,
        latest=version == latest,
        promoted=version == promoted,
        canary=_canary(record),
        manifest=ctx.broker.adapters.manifest(version),
        files=files,
        archive_url=f"/v1/adapters/{version}/archive",
    )


@router.get("", response_model=AdapterList,
            summary="Published adapter versions with their manifests and canary decisions",
            responses=error_responses(401, 500, 503))
def list_adapters(ctx: ApiContext = Depends(get_context)) -> AdapterList:
    store = ctx.broker.adapters
    latest = ctx.broker.registry.latest()  # the fleet's newest publish (the store holds the files)
    promoted = ctx.broker.promotion.promoted()
    records = ctx.broker.promotion.all()
    items = [_info(ctx, v, latest, promoted, records.get(v)) for v in store.versions()]
    return AdapterList(latest=latest, promoted=promoted, items=items)


@router.get("/{version}", response_model=AdapterInfo,
            summary="One adapter version with its canary scores ('latest' for the promoted one)",
            responses=error_responses(401, 404, 422, 500, 503))
def get_adapter(version: VersionRef, ctx: ApiContext = Depends(get_context)) -> AdapterInfo:
    number = _resolve(ctx, version)
    promotion = ctx.broker.promotion
    return _info(ctx, number, ctx.broker.registry.latest(), promotion.promoted(), promotion.get(number))


@router.get(
    "/{version}/files/{name}",
    summary="Download one file of an adapter version",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                 "application/json": {"schema": {"type": "object"}}},
                     "description": "The file; ETag is its sha256"}}
    | error_responses(304, 401, 404, 422, 500, 503),
)
def download_file(
    version: VersionRef,
    name: FileName,
    if_none_match: str | None = Header(None),
    ctx: ApiContext = Depends(get_context),
) -> Response:
    number = _resolve(ctx, version)
    directory, weights_sha = _verified_dir(ctx, number)
    etag = quoted(_file_sha(directory, name, weights_sha))
    control = cache_control(private=ctx.settings.require_auth_for_reads, immutable=version != "latest")
    ctx.metrics.adapter_downloads.labels("file").inc()
    if matches(if_none_match, etag):
        return not_modified(etag, control)
    return FileResponse(
        directory / name,
        media_type=MEDIA_TYPES[FsPath(name).suffix],
        filename=name,
        headers={"ETag": etag, "Cache-Control": control},
    )


@router.get(
    "/{version}/archive",
    summary="Download an adapter version as one .tar (PEFT files + manifest at the top level)",
    response_class=Response,
    responses={200: {"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "A deterministic tar; ETag is its sha256"}}
    | error_responses(304, 401, 404, 422, 500, 503),
)
async def download_archive(
    version: VersionRef,
    if_none_match: str | None = Header(None),
    ctx: ApiContext = Depends(get_context),
) -> Response:
    number = await run_in_threadpool(_resolve, ctx, version)
    directory, weights_sha = await run_in_threadpool(_verified_dir, ctx, number)
    manifest = ctx.broker.adapters.manifest(number)
    archive = await run_in_threadpool(ctx.archives.get, number, weights_sha, directory, manifest.created_at)
    etag = quoted(archive.sha256)
    control = cache_control(private=ctx.settings.require_auth_for_reads, immutable=version != "latest")
    ctx.metrics.adapter_downloads.labels("archive").inc()
    if matches(if_none_match, etag):
        return not_modified(etag, control)
    headers = {
        "ETag": etag,
        "Cache-Control": control,
        "Content-Disposition": f'attachment; filename="{archive.filename}"',
    }
    return Response(archive.data, media_type="application/x-tar", headers=headers)

