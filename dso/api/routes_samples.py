"""Sample endpoints for the console: recent labelled samples, their meshes and previews, and rate history.

Samples are read from the replay buffer (``dso.broker.replay``), which keeps the newest
``replay_capacity // 2`` records of each class: a sample that has been evicted (or
whose verdict was invalid, so it was never stored) answers 404. Same auth as the
other reads (``require_read``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import trimesh
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response

from dso.api import sample_media, stability_history
from dso.api.deps import ApiContext, get_context, require_read
from dso.api.errors import ApiError
from dso.api.http_cache import cache_control, matches, not_modified, quoted
from dso.api.schemas import (
    PROMPT_ID_PATTERN,
    SAMPLE_ID_PATTERN,
    AdapterPublication,
    CanaryPoint,
    HistoryBucket,
    SampleInfo,
    SamplePage,
    SamplePose,
    StabilityHistory,
    error_responses,
)
from dso.broker.records import LabelledRecord
from dso.broker.replay import CLASSES, ReplayBuffer
from dso.sim.verdict import Outcome
from dso.config import ConsoleSettings, Settings, ShapesSettings

router = APIRouter(tags=["samples"])
SampleId = Annotated[str, Path(pattern=SAMPLE_ID_PATTERN, description="the sample's id")]
PoseQuery = Query("upright", description="upright: as generated; resting: as the simulator left it (unstable samples fall)")
FETCH_CHUNK = 32  # records fetched per Redis round trip while scanning


@dataclass
class SamplesContext:
    """What the sample routes need beyond ``ApiContext``: console settings, sim scale, render settings, cache."""

    console: ConsoleSettings
    object_scale: float
    shapes: ShapesSettings
    cache: sample_media.MediaCache
    mesh_scale: float = 1.0  # sim.mesh_scale: mesh samples are in mesh units

    def metres_per_unit(self, shape: sample_media.Drawable) -> float:
        """How the simulator scaled this sample: object_scale per grid unit, times mesh_scale per mesh unit."""
        return self.object_scale * (self.mesh_scale if isinstance(shape, trimesh.Trimesh) else 1.0)

    @property
    def view(self) -> sample_media.PreviewView:
        return sample_media.PreviewView(
            self.console.preview_azimuth_deg, self.console.preview_elevation_deg, self.console.preview_fov_deg
        )


def attach(app: FastAPI, settings: Settings) -> None:
    """Add these routes to ``app``, with the state they read (create_app calls this)."""
    app.state.samples = SamplesContext(
        console=settings.console,
        object_scale=settings.sim.object_scale,
        mesh_scale=settings.sim.mesh_scale,
        shapes=settings.shapes,
        cache=sample_media.MediaCache(settings.console.media_cache_bytes),
    )
    app.include_router(build_listing_router(settings.console))
    app.include_router(router)


def get_samples_context(request: Request) -> SamplesContext:
    return request.app.state.samples


# --- reading the replay buffer --------------------------------------------------------------------


def recent_records(
    replay: ReplayBuffer, classes: tuple[str, ...], prompt_id: str | None, limit: int, scan: int
) -> tuple[list[LabelledRecord], int]:
    """Newest records matching the filters, and how many were examined."""
    ids = replay.newest_ids(classes, scan)
    found: list[LabelledRecord] = []
    examined = 0
    for offset in range(0, len(ids), FETCH_CHUNK):
        for record in replay.get_many(ids[offset : offset + FETCH_CHUNK]):
            examined += 1
            if record is None:
                continue  # evicted between listing and fetching, or unreadable
            if prompt_id is None or record.sample.prompt_id == prompt_id:
                found.append(record)
                if len(found) == limit:
                    return found, examined
    return found, examined


def sample_info(record: LabelledRecord) -> SampleInfo:
    sample, verdict = record.sample, record.verdict
    pose = None
    if verdict.position is not None and verdict.quaternion is not None:
        pose = SamplePose(position=verdict.position, quaternion=verdict.quaternion)
    base = f"/v1/samples/{sample.sample_id}"
    return SampleInfo(
        id=sample.sample_id,
        prompt_id=sample.prompt_id,
        view=sample.view,
        seed=sample.seed,
        adapter_version=sample.adapter_version,
        created_at=sample.created_at,
        outcome=verdict.outcome,
        stable=verdict.outcome == Outcome.stable,
        tilt_deg=verdict.tilt_deg,
        rotation_deg=verdict.rotation_deg,
        status=verdict.status,
        message=verdict.message,
        pose=pose,
        mesh_url=f"{base}/mesh.glb",
        resting_mesh_url=f"{base}/mesh.glb?pose=resting" if pose else None,
        preview_url=f"{base}/preview.png",
        resting_preview_url=f"{base}/preview.png?pose=resting" if pose else None,
        prompt_image_url=f"/v1/prompts/{sample.prompt_id}/image",
    )


def _record(ctx: ApiContext, sample_id: str) -> LabelledRecord:
    record = ctx.broker.replay.get(sample_id)
    if record is None:
        raise ApiError(404, f"no sample {sample_id} in the replay buffer (never labelled, invalid, or evicted)")
    return record


# --- routes -----------------------------------------------------------------------------------------


@router.get(
    "/v1/samples/{sample_id}",
    response_model=SampleInfo,
    summary="One labelled sample: verdict, final pose and the URLs of its views",
    responses=error_responses(401, 404, 422, 503),
    dependencies=[Depends(require_read)],
)
def get_sample(sample_id: SampleId, ctx: ApiContext = Depends(get_context)) -> SampleInfo:
    return sample_info(_record(ctx, sample_id))


def _media_response(
    data: bytes, media_type: str, if_none_match: str | None, ctx: ApiContext, filename: str | None = None
) -> Response:
    etag = quoted(hashlib.sha256(data).hexdigest())
    control = cache_control(private=ctx.settings.require_auth_for_reads, immutable=True)
    if matches(if_none_match, etag):
        return not_modified(etag, control)
    headers = {"ETag": etag, "Cache-Control": control}
    if filename:
        headers["Content-Disposition"] = f'inline; filename="{filename}"'
    return Response(data, media_type=media_type, headers=headers)


def _pose_of(record: LabelledRecord, which: str) -> sample_media.RestingPose | None:
    try:
        pose = sample_media.RestingPose.from_lists(record.verdict.position, record.verdict.quaternion)
    except ValueError as exc:
        raise ApiError(500, f"sample {record.sample_id} has a malformed stored pose: {exc}") from None
    if which == "resting" and pose is None:
        raise ApiError(404, f"sample {record.sample_id} has no final pose (its verdict predates pose recording)")
    return pose


def _check_drawable(record: LabelledRecord) -> sample_media.Drawable:
    """What the oracle judged: the generator's mesh when the sample has one (never empty), else its grid."""
    if record.sample.mesh is not None:
        return record.sample.mesh.to_trimesh()
    occupancy = record.sample.occupancy
    if occupancy is None or not occupancy.any():
        raise ApiError(404, f"sample {record.sample_id} has an empty occupancy grid: nothing to draw")
    return occupancy


@router.get(
    "/v1/samples/{sample_id}/mesh.glb",
    summary="The sample's surface mesh as binary glTF (y up, ground at y = 0, grid units)",
    description=(
        "Marching cubes of the occupancy grid in the unit cube (a mesh-emitting generator's sample: its own "
        "mesh, in its units), turned from the simulator's z-up frame to glTF's "
        "y-up (-90 degrees about x) and shifted so that the ground plane is y = 0. `pose=resting` applies the "
        "simulator's final rotation about the body origin (horizontal drift dropped)."
    ),
    response_class=Response,
    responses={200: {"content": {"model/gltf-binary": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "GLB bytes; ETag is their sha256"}}
    | error_responses(304, 401, 404, 422, 503),
    dependencies=[Depends(require_read)],
)
def get_sample_mesh(
    sample_id: SampleId,
    pose: Literal["upright", "resting"] = PoseQuery,
    if_none_match: str | None = Header(None),
    ctx: ApiContext = Depends(get_context),
    samples: SamplesContext = Depends(get_samples_context),
) -> Response:
    record = _record(ctx, sample_id)
    occupancy = _check_drawable(record)
    resting = _pose_of(record, pose)

    def make() -> bytes:
        mesh = sample_media.posed_mesh(occupancy, pose, resting, samples.metres_per_unit(occupancy))
        return sample_media.glb_bytes(mesh, sample_media.ground_height(occupancy))

    data = samples.cache.get_or_make(("glb", sample_id, pose), make)
    return _media_response(data, "model/gltf-binary", if_none_match, ctx, f"{sample_id}-{pose}.glb")


@router.get(
    "/v1/samples/{sample_id}/preview.png",
    summary="A rendered view of the sample (voxels upright, or the mesh in its final resting pose)",
    response_class=Response,
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "RGBA PNG, transparent background; ETag is its sha256"}}
    | error_responses(304, 401, 404, 422, 503),
    dependencies=[Depends(require_read)],
)
def get_sample_preview(
    sample_id: SampleId,
    pose: Literal["upright", "resting"] = PoseQuery,
    if_none_match: str | None = Header(None),
    ctx: ApiContext = Depends(get_context),
    samples: SamplesContext = Depends(get_samples_context),
) -> Response:
    record = _record(ctx, sample_id)
    occupancy = _check_drawable(record)
    resting = _pose_of(record, pose)

    def make() -> bytes:
        return sample_media.preview_png(
            occupancy, pose, resting, samples.metres_per_unit(occupancy), samples.view, samples.console.preview_size,
            samples.shapes,
        )

    data = samples.cache.get_or_make(("png", sample_id, pose), make)
    return _media_response(data, "image/png", if_none_match, ctx)


def build_listing_router(console: ConsoleSettings) -> APIRouter:
    """The two reads whose page sizes come from the settings: the bounds are part of the OpenAPI document."""
    listing = APIRouter(tags=["samples"])

    @listing.get(
        "/v1/samples",
        response_model=SamplePage,
        summary="Recent labelled samples with their verdicts (newest first)",
        responses=error_responses(401, 422, 503),
        dependencies=[Depends(require_read)],
    )
    def list_samples(
        prompt_id: str | None = Query(None, pattern=PROMPT_ID_PATTERN, description="only samples of this prompt"),
        verdict: Literal["stable", "unstable"] | None = Query(None, description="only this class"),
        limit: int = Query(console.samples_default_limit, ge=1, le=console.samples_max_limit, description="page size"),
        ctx: ApiContext = Depends(get_context),
    ) -> SamplePage:
        classes = CLASSES if verdict is None else (verdict,)
        records, examined = recent_records(ctx.broker.replay, classes, prompt_id, limit, console.samples_scan_limit)
        return SamplePage(items=[sample_info(r) for r in records], scanned=examined, limit=limit)

    @listing.get(
        "/v1/stats/history",
        response_model=StabilityHistory,
        summary="Stability rate over time (the newest verdict events in equal time slices), adapter publish times "
        "and the canary's score of each version",
        responses=error_responses(401, 422, 503),
        dependencies=[Depends(require_read)],
        tags=["operations"],
    )
    def get_history(
        buckets: int = Query(console.history_buckets, ge=1, le=console.history_max_buckets, description="time slices"),
        ctx: ApiContext = Depends(get_context),
    ) -> StabilityHistory:
        now = time.time()
        events = ctx.broker.stats.verdict_events()
        return StabilityHistory(
            time=now,
            events=len(events),
            buckets=[HistoryBucket(**row) for row in stability_history.bucket_events(events, buckets, now)],
            adapters=[AdapterPublication(**a) for a in stability_history.adapter_publications(ctx.broker.registry)],
            canary=[CanaryPoint(**point) for point in stability_history.canary_points(ctx.broker.promotion)],
            promoted_version=ctx.broker.promotion.promoted(),
        )

    return listing
