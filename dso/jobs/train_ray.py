"""`dso train --workers N`: the offline training loop, data parallel over Ray Train workers.

Ray Train's TorchTrainer starts N workers and a torch.distributed process group
(gloo on CPU, NCCL on GPUs). Each worker loads the dataset and the base model,
builds a ``DataParallelFineTuner`` (DDP over the LoRA parameters) and runs the
same ``OfflineTrainingLoop`` as a single process, on its slice of each global
batch. Rank 0 writes the checkpoints to ``out_dir`` (which every worker must
see: a local disk on one machine, shared storage on a cluster) and reports each
one to Ray Train, which copies it to ``out_dir/ray``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dso.config import Settings

RAY_STORAGE_DIR = "ray"


@dataclass
class RayTrainResult:
    steps: int
    metrics: dict
    checkpoint: Path | None  # Ray's copy of the last reported checkpoint


def _worker_loop(config: dict) -> None:
    """Runs in each Ray Train worker."""
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device

    from dso.learner.dataset import OfflineDataset
    from dso.learner.offline import DataParallelFineTuner, OfflineTrainingLoop, ParallelContext
    from dso.learner.trainer import training_guidance
    from dso.models.factory import load_stage_one

    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    settings = Settings.model_validate(config["settings"])
    device = get_device()
    settings.model.device = str(device)
    dataset = OfflineDataset.load(Path(config["dataset_dir"]))
    flow = load_stage_one(settings.model).flow
    torch.manual_seed(settings.train.seed)  # LoRA init from the global RNG (DDP also broadcasts rank 0's)
    tuner = DataParallelFineTuner(
        flow, settings.lora, settings.objective, settings.train, device, rank, training_guidance(settings)
    )

    def report(path: Path, metrics: dict) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(path)) if rank == 0 else None
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, checkpoint=checkpoint)

    loop = OfflineTrainingLoop(tuner, dataset, Path(config["out_dir"]), ParallelContext(rank, world, dist.barrier), on_checkpoint=report)
    loop.run(config["steps"], resume=config["resume"])


def train_with_ray(
    settings: Settings,
    dataset_dir: Path,
    out_dir: Path,
    workers: int,
    steps: int | None = None,
    use_gpu: bool = False,
    resume: bool = True,
    cpus_per_worker: int = 1,
    address: str | None = None,
) -> RayTrainResult:
    """Train with ``workers`` data-parallel Ray Train workers; ``settings.train.batch_size`` is per worker."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    total = settings.train.steps if steps is None else steps
    config = {
        "settings": settings.model_dump(mode="json"),
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "out_dir": str(out_dir),
        "steps": total,
        "resume": resume,
        "threads": cpus_per_worker,
    }
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="dso-train", storage_path=str(out_dir / RAY_STORAGE_DIR)),
    )
    result = trainer.fit()
    checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else None
    return RayTrainResult(steps=int(result.metrics.get("step", 0)) if result.metrics else 0, metrics=dict(result.metrics or {}), checkpoint=checkpoint)
