"""Generator role: sample prompts, generate K shapes each with the current LoRA policy, enqueue them.

Every sample carries the adapter version that made it. Between batches (never
inside one, so a batch has exactly one version) the worker looks for a newer
*promoted* adapter (``broker.promotion``: the canary passed it, or every publish
when the canary is off) and hot-swaps it into the live model with
:class:`dso.models.lora.AdapterSwapper`, which proves the swap changed the
model's output; the publish-to-adopt latency goes to the Prometheus histogram
(:mod:`dso.telemetry`) and to the run's adoption record (``broker.adoptions``, :class:`dso.broker.adoptions.AdoptionLog`).

Prompts are read from the store on every batch, and prompts this worker has not
sampled yet go first, so an image uploaded over the API is sampled within one
batch (``loop.prompts_per_batch`` new prompts per batch), and the default set is
covered once before any prompt repeats.

A generator that emits meshes (``dso.models.contract.MeshDecoder``) gets each mesh into its
record (``SampleRecord.mesh``, at most ``sim.max_faces`` faces), and the simulators judge it.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
import numpy as np

from dso import telemetry
from dso.actors.prompt_images import PromptImages
from dso.broker.adapter_store import AdapterStoreError
from dso.broker.broker import Broker
from dso.broker.records import SampleMesh, SampleRecord
from dso.config import Settings
from dso.models.contract import GeneratedShape, ShapeGenerator, generate_shapes
from dso.models.generator import Generator
from dso.models.lora import AdapterSwapError, AdapterSwapper, attach_lora, flow_model_probe

log = logging.getLogger(__name__)
SEED_SPACE = 2**40  # sample seeds are drawn from [0, SEED_SPACE); each sample records its own


@dataclass(frozen=True)
class GeneratedBatch:
    """What one ``step`` enqueued."""

    samples: int
    adapter_version: int
    seconds: float
    sample_ids: tuple[str, ...]


def generator_settings(settings: Settings) -> Settings:
    """The settings with the model placed on the loop's generator device."""
    model = settings.model.model_copy(update={"device": settings.loop.generator_device})
    return settings.model_copy(update={"model": model})


class GeneratorWorker:
    """One generator: the policy (base + LoRA) and the loop around it."""

    def __init__(self, broker: Broker, settings: Settings, name: str = "generator-0", generator: ShapeGenerator | None = None):
        self.broker = broker
        self.settings = settings
        self.loop = settings.loop
        self.name = name
        self.generator = generator or Generator.from_settings(generator_settings(settings))
        # the live policy is base + LoRA from the start (B = 0: version 0 is the base model), so
        # every later version is an in-place copy of adapter weights, never a model rebuild
        self.policy = attach_lora(self.generator.trainable_module, settings.lora).eval()
        self.generator.flow = self.policy
        self.swapper = AdapterSwapper(self.policy, flow_model_probe(self.policy, settings.lora), settings.lora)
        self.version = 0
        self.images = PromptImages(broker.prompts, settings)
        self.adoptions = broker.adoptions
        self.rng = np.random.default_rng([settings.loop.seed, zlib.crc32(name.encode()), time.time_ns()])
        self.refused_versions: set[int] = set()
        self.sampled_prompts: set[str] = set()  # prompt ids this worker has generated from
        self.generated = 0
        telemetry.set_adapter_version("generator", self.version)

    @property
    def batch_size(self) -> int:
        return self.loop.prompts_per_batch * self.loop.samples_per_prompt

    # --- adapters -----------------------------------------------------------------

    def latest_version(self) -> int:
        """The promoted version (the canary's decision; without a canary every publish is promoted).

        Never the newest publish: a candidate the gate has not passed is never served.
        """
        if self.loop.adopt_poll_s > 0:
            newer = self.broker.promotion.wait_for_promoted(self.version, self.loop.adopt_poll_s)
            if newer is not None:
                return newer
        return self.broker.promotion.promoted()

    def maybe_adopt(self) -> int | None:
        """Hot-swap to the newest adapter if it is newer than the live one; returns the version adopted."""
        latest = self.latest_version()
        if latest <= self.version or latest in self.refused_versions:
            return None
        try:
            manifest = self.broker.adapters.manifest(latest)
            path = self.broker.adapters.path(latest)  # verifies the sha256 against the manifest
            self.swapper.swap(path, version=str(latest), expect_change=True)
        except (AdapterStoreError, AdapterSwapError, OSError, ValueError) as exc:
            # a corrupt or unloadable version is skipped, not retried forever; the next one is tried
            log.error("%s: refusing adapter version %d: %s", self.name, latest, exc)
            self.refused_versions.add(latest)
            return None
        self.version = latest
        latency = telemetry.adoption_latency(manifest.created_at)
        telemetry.set_adapter_version("generator", latest)
        telemetry.observe_publish_to_adopt(latency)
        self.adoptions.record(latest, latency, self.name)
        log.info("%s: adopted adapter version %d (%.3f s after publish)", self.name, latest, latency)
        return latest

    # --- one batch ----------------------------------------------------------------

    def record_mesh(self, shape: GeneratedShape) -> SampleMesh | None:
        """The mesh a mesh-emitting generator made, checked against ``sim.max_faces`` before it is enqueued."""
        if shape.emitted_mesh is None:
            return None
        return SampleMesh.from_trimesh(shape.emitted_mesh, max_faces=self.settings.sim.max_faces)

    def choose_prompts(self) -> list[str]:
        """``loop.prompts_per_batch`` active prompt ids: never-sampled ones first (newest first), the rest at random.

        The store is read on every call, so uploads and retirements take effect on the next batch.
        """
        active = self.broker.prompts.active()  # oldest first
        if not active:
            return []
        self.sampled_prompts.intersection_update(active)  # forget retired prompts
        n = self.loop.prompts_per_batch
        fresh = [p for p in active if p not in self.sampled_prompts][-n:]
        rest = [str(p) for p in self.rng.choice(active, size=n - len(fresh))] if len(fresh) < n else []
        return fresh + rest

    def step(self) -> GeneratedBatch | None:
        """Adopt a newer adapter if any, then generate and enqueue one batch; None when there is no room or no prompt."""
        self.maybe_adopt()
        n = self.batch_size
        if not self.broker.admission.admit(n):
            return None
        chosen = self.choose_prompts()
        if not chosen:
            return None
        images = [self.images.get(pid) for pid in chosen]
        first_seed = int(self.rng.integers(0, SEED_SPACE))
        started = time.perf_counter()
        shapes = generate_shapes(self.generator, images, samples_per_image=self.loop.samples_per_prompt, seed=first_seed)
        seconds = time.perf_counter() - started
        self.sampled_prompts.update(chosen)
        ids = []
        batch = self.broker.transaction()  # samples and their count: all or nothing
        for shape in shapes:
            record = SampleRecord(
                prompt_id=chosen[shape.image_index],
                view=0,
                adapter_version=self.version,
                seed=shape.seed,
                latent=shape.latent.numpy(),
                occupancy=shape.occupancy,
                mesh=self.record_mesh(shape),
                generation_seconds=seconds / len(shapes),
            )
            self.broker.samples.put(record.sample_id, record.to_bytes(), pipe=batch)
            ids.append(record.sample_id)
        self.broker.stats.record_generated(self.version, len(shapes), seconds, pipe=batch)
        batch.execute()
        telemetry.observe_generated(len(shapes), seconds)
        self.generated += len(shapes)
        return GeneratedBatch(len(shapes), self.version, seconds, tuple(ids))
