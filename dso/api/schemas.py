"""Request and response models of the API: what the OpenAPI document shows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dso.broker.adapter_store import AdapterManifest
from dso.broker.promotion import Decision
from dso.sim.verdict import Outcome, SimStatus

PROMPT_ID_PATTERN = r"^[0-9a-f]{64}$"
SHA = "3f1a3c5e0b2d4f6a8c9e1b3d5f7a9c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d0f1a"


class ErrorResponse(BaseModel):
    """Every error: a sentence that says what was wrong."""

    detail: str = Field(examples=["file 'notes.png': not a readable image (expected an image file such as PNG, JPEG, WEBP)"])


class PromptMetadata(BaseModel):
    """What the API recorded about an uploaded image (default prompts carry other keys)."""

    model_config = ConfigDict(extra="allow")

    source: str | None = Field(None, examples=["api"])
    filename: str | None = Field(None, examples=["chair.png"])
    format: str | None = Field(None, examples=["PNG"])
    content_type: str | None = Field(None, examples=["image/png"])
    width: int | None = Field(None, examples=[512])
    height: int | None = Field(None, examples=[512])
    mode: str | None = Field(None, examples=["RGBA"])
    has_alpha: bool | None = Field(None, examples=[True])
    bytes: int | None = Field(None, examples=[48213])


class UploadedPrompt(BaseModel):
    id: str = Field(description="sha256 of the image bytes: the same image always gets the same id", examples=[SHA])
    created: bool = Field(description="false when these bytes were uploaded before (the prompt is reactivated)")
    filename: str | None = None
    format: str = Field(examples=["PNG"])
    width: int
    height: int
    mode: str = Field(examples=["RGBA"])
    has_alpha: bool
    bytes: int


class UploadResponse(BaseModel):
    prompts: list[UploadedPrompt]
    created: int = Field(description="how many of the images were new")
    duplicates: int = Field(description="how many were stored before")


class PromptStability(BaseModel):
    """Verdicts on samples generated from this prompt."""

    labelled: int = 0
    stable: int = 0
    unstable: int = 0
    invalid: int = 0
    stability_rate: float | None = Field(None, description="stable / (stable + unstable); null before any verdict")


class PromptInfo(BaseModel):
    id: str = Field(examples=[SHA])
    active: bool = Field(description="false once retired: generators no longer sample it")
    created_at: float = Field(description="Unix time of the first upload")
    metadata: PromptMetadata
    stability: PromptStability
    image_url: str = Field(examples=[f"/v1/prompts/{SHA}/image"])


class PromptPage(BaseModel):
    items: list[PromptInfo]
    total: int = Field(description="prompts matching the filter")
    offset: int
    limit: int
    next_offset: int | None = Field(None, description="offset of the next page; null on the last page")


class RetireResponse(BaseModel):
    id: str
    retired: bool = Field(description="false when the prompt was already retired")


class AdapterFile(BaseModel):
    name: str = Field(examples=["adapter_model.safetensors"])
    size: int
    sha256: str = Field(description="also the file's strong ETag", examples=[SHA])
    url: str = Field(examples=["/v1/adapters/3/files/adapter_model.safetensors"])


class CanaryResult(BaseModel):
    """The canary's scores of one adapter version on the fixed probe set, and the promotion gate's decision."""

    decision: Decision = Field(description="promoted: served to the fleet; refused: outside a gate bound; "
                               "superseded: a newer candidate came first; baseline: the base model's reference")
    reasons: list[str] = Field(description="one line per gate bound broken (refused), or why it passed",
                               examples=[["chamfer ratio 1.09 > 1.05"]])
    scores: dict[str, float] = Field(
        description="stable_ratio, paired_drift, chamfer, fscore, footprint_ratio, diversity (and stable_n when kept)",
        examples=[{"stable_ratio": 0.78, "paired_drift": 0.9, "chamfer": 1.01, "fscore": 0.64,
                   "footprint_ratio": 1.02, "diversity": 0.97}],
    )
    samples: int = Field(description="probe samples scored")
    seconds: float = Field(description="wall time the canary spent on it")
    decided_at: float = Field(description="Unix time of the decision")


class AdapterInfo(BaseModel):
    version: int = Field(examples=[3])
    latest: bool = Field(description="the newest published candidate (it may still await the canary, or be refused)")
    promoted: bool = Field(description="the version generators and /v1/adapters/latest serve")
    canary: CanaryResult | None = Field(None, description="null until the canary has scored this version")
    manifest: AdapterManifest
    files: list[AdapterFile]
    archive_url: str = Field(examples=["/v1/adapters/3/archive"])


class AdapterList(BaseModel):
    latest: int | None = Field(None, description="newest published version; null before the first publish")
    promoted: int = Field(
        0, description="the version /v1/adapters/latest serves; 0 (the base model) before any promotion"
    )
    items: list[AdapterInfo]


class DecisionCounts(BaseModel):
    """Adapter versions by the gate's decision on them, over the whole run."""

    promoted: int = 0
    refused: int = 0
    superseded: int = 0
    baseline: int = 0


class VerdictCounts(BaseModel):
    generated: int = 0
    labelled: int = 0
    stable: int = 0
    unstable: int = 0
    invalid: int = 0
    stability_rate: float | None = Field(None, description="stable / (stable + unstable)")
    invalid_rate: float | None = Field(None, description="invalid / labelled")


class TotalCounts(VerdictCounts):
    generation_seconds: float = 0.0


class WindowCounts(VerdictCounts):
    samples: int = Field(description="the window holds at most this many recent events ...")
    seconds: float = Field(description="... no older than this")
    staleness_mean: float | None = Field(None, description="mean of current version - sample's version")
    staleness_max: int | None = None
    generated_per_s: float = Field(0.0, description="samples generated per second over generated_seconds")
    labelled_per_s: float = Field(0.0, description="samples labelled per second over labelled_seconds")
    generated_seconds: float = Field(0.0, description="time the window's generation events cover (<= seconds)")
    labelled_seconds: float = Field(0.0, description="time the window's verdict events cover (<= seconds)")


class Throughput(BaseModel):
    generated_per_s: float = Field(description="samples generated per second over the time the window covers")
    labelled_per_s: float = Field(description="samples labelled per second over the time the window covers")


class LearnerStats(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int | None = None
    loss: float | None = None
    version: int | None = None
    updated_at: float | None = None
    loss_window_mean: float | None = None


class QueueStats(BaseModel):
    length: int
    lag: int
    pending: int
    backlog: int


class StatsResponse(BaseModel):
    time: float
    current_version: int | None = Field(None, description="newest announced adapter version")
    totals: TotalCounts
    window: WindowCounts
    by_version: dict[str, VerdictCounts] = Field(description="counts per adapter version (keys are versions)")
    throughput: Throughput
    learner: LearnerStats
    queues: dict[str, QueueStats]
    dead_letters: int = Field(description="entries in the dead-letter stream")
    prompts_active: int
    promoted_version: int = Field(0, description="the version generators follow (0: the base model)")
    decisions: DecisionCounts = Field(default_factory=DecisionCounts, description="canary decisions so far")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(
        description="'ok' or what is wrong, per check", examples=[{"redis": "ok", "adapter_store": "ok"}]
    )


class ScrapeTargetGroup(BaseModel):
    """One Prometheus HTTP service-discovery group."""

    targets: list[str] = Field(examples=[["10.0.0.5:9100"]])
    labels: dict[str, str] = Field(examples=[{"component": "simulator"}])


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    descriptions = {
        304: "Not modified: the client's copy (If-None-Match) is current",
        401: "Missing or invalid bearer token (see WWW-Authenticate)",
        404: "Not found",
        413: "Too large: body, file or pixel count over the limit",
        415: "Not an accepted image format, or not a multipart/form-data body",
        422: "Invalid request or corrupt image",
        500: "Stored data failed an integrity check",
        503: "Broker (Redis) unavailable",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": descriptions[code]}
        if code != 304:
            entry["model"] = ErrorResponse
        out[code] = entry
    return out


# --- samples and history (the web console's reads; dso/api/routes_samples.py) -------------------------

SAMPLE_ID_PATTERN = r"^[0-9A-Za-z_-]{1,128}$"


class SamplePose(BaseModel):
    """The simulator's final pose of the body, in its z-up world (metres)."""

    position: list[float] = Field(description="final body origin (x, y, z), metres", examples=[[0.01, -0.02, 0.11]])
    quaternion: list[float] = Field(description="final orientation (w, x, y, z)", examples=[[0.71, 0.70, 0.0, 0.0]])


class SampleInfo(BaseModel):
    """One labelled sample from the replay buffer, with its verdict and where to fetch its views."""

    id: str = Field(examples=["5f0c1e2d3b4a59687766554433221100"])
    prompt_id: str = Field(examples=[SHA])
    view: int
    seed: int
    adapter_version: int = Field(description="the adapter version that generated it (0 = base model)")
    created_at: float = Field(description="Unix time the sample was generated")
    outcome: Outcome = Field(description="the oracle verdict's class (the replay buffer keeps only judged ones)")
    stable: bool
    tilt_deg: float | None = Field(description="angle of the body's up axis from vertical at the end (yaw ignored)")
    rotation_deg: float | None = Field(description="total rotation angle at the end (yaw included)")
    status: SimStatus = Field(examples=["ok"])
    message: str = ""
    pose: SamplePose | None = Field(None, description="final resting pose; null for records made before it was kept")
    mesh_url: str = Field(examples=["/v1/samples/5f0c.../mesh.glb"])
    resting_mesh_url: str | None = Field(None, description="the mesh in its final pose (null without a pose)")
    preview_url: str
    resting_preview_url: str | None = None
    prompt_image_url: str


class SamplePage(BaseModel):
    items: list[SampleInfo] = Field(description="newest first")
    scanned: int = Field(description="replay records examined (at most console.samples_scan_limit)")
    limit: int


class HistoryBucket(BaseModel):
    start: float = Field(description="Unix time the slice begins")
    end: float
    stable: int
    unstable: int
    invalid: int
    stability_rate: float | None = Field(None, description="stable / (stable + unstable); null when no verdict")
    max_version: int | None = Field(None, description="newest adapter version among the slice's samples")


class AdapterPublication(BaseModel):
    version: int
    created_at: float = Field(description="Unix time the version was published")
    step: int | None = None
    objective: str | None = None


class CanaryPoint(BaseModel):
    """One scored version on the stability chart: the canary's % stable on the probe set at decision time."""

    version: int
    decided_at: float = Field(description="Unix time of the decision")
    decision: Decision
    stable_ratio: float | None = Field(None, description="stable share of the probe samples")
    paired_drift: float | None = Field(
        None, description="mean Chamfer to the base model's sample of the same prompt and seed"
    )
    chamfer: float | None = Field(None, description="Chamfer to ground truth on the probe set")


class StabilityHistory(BaseModel):
    """Stability rate over the newest verdict events (``broker.stats_window_samples``), in time slices."""

    time: float
    events: int = Field(description="verdict events the slices are built from")
    buckets: list[HistoryBucket]
    adapters: list[AdapterPublication] = Field(description="every published adapter version, oldest first")
    canary: list[CanaryPoint] = Field(default_factory=list, description="every scored version, oldest first")
    promoted_version: int = Field(0, description="the version generators follow (0: the base model)")
