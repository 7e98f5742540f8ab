"""Generator throughput and peak memory: samples/s for the tiny config on CPU (and TRELLIS-L on a GPU).

Each case runs in its own subprocess so its peak memory is its own. The baseline
is batch 1 of the same config in the same run; ratios are quoted against it.

    python bench/generator.py            # writes the "Generator" section of docs/benchmarks.md
    python bench/generator.py --quick
    python bench/generator.py --config trellis --source random --device cuda --batches 1 8 --dtypes fp32 bf16 \
        --json out.json                  # chosen cases only (bench/gpu.sh); prints, writes no docs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchdocs import write_section as write_section_in

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Generator"


def run_case(config: str, batch: int, dtype: str, device: str, reps: int, source: str) -> dict:
    """Inside the subprocess: build the generator, warm up, time ``reps`` batches."""
    import numpy as np
    import torch
    from PIL import Image

    from dso.config import load_settings
    from dso.models.generator import Generator

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    env = {"DSO__MODEL__DTYPE": dtype, "DSO__MODEL__DEVICE": device}
    if source:
        env["DSO__MODEL__SOURCE"] = source
    settings = load_settings(config, environ=env)
    if source == "random":
        # TRELLIS-L size with random weights (non-zero output layer); the condition is random
        # DINOv2-shaped tokens, so this times the flow transformer + sampler + decoder.
        from dso.models.factory import build_tiny_modules
        from dso.models.sampler import FlowEulerSampler

        modules = build_tiny_modules(settings.model).to(torch.device(device))
        for p in modules.flow.parameters():
            torch.nn.init.normal_(p, std=0.02)
        sampler = FlowEulerSampler(settings.sampler)
        flow = modules.flow
        cond = torch.randn(batch, 1374, flow.config["cond_channels"], device=device)
        noise_shape = (batch, flow.in_channels, flow.resolution, flow.resolution, flow.resolution)

        def once(seed: int) -> None:
            g = torch.Generator(device=device).manual_seed(seed)
            with torch.no_grad():
                x0 = sampler.sample(flow, torch.randn(noise_shape, generator=g, device=device), cond)
                modules.decoder(x0)
    else:
        gen = Generator.from_settings(settings)
        img = np.zeros((256, 256, 4), np.uint8)
        img[60:200, 100:160] = (180, 90, 60, 255)
        images = [Image.fromarray(img, "RGBA")] * batch

        def once(seed: int) -> None:
            gen.generate(images, samples_per_image=1, seed=seed)

    once(0)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for r in range(reps):
        once(r * batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {
        "config": config,
        "batch": batch,
        "dtype": dtype,
        "device": device,
        "steps": settings.sampler.steps if settings.sampler.steps else None,
        "samples_per_s": batch * reps / seconds,
        "seconds_per_batch": seconds / reps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def spawn(config: str, batch: int, dtype: str, device: str, reps: int, source: str = "") -> dict:
    cmd = [sys.executable, __file__, "--case", json.dumps([config, batch, dtype, device, reps, source])]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"case {config} b{batch} {dtype} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> list[str]:
    """Markdown rows; "x batch-1" is against the first case (batch 1 of the first config), for that config only."""
    base = results[0]
    header = "| config | device | dtype | batch | samples/s | x batch-1 | s/batch | peak RSS MB | peak GPU MB |"
    rows = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = r["samples_per_s"] / base["samples_per_s"] if r["config"] == base["config"] else float("nan")
        rows.append(
            f"| {r['config']} | {r['device']} | {r['dtype']} | {r['batch']} | {r['samples_per_s']:.2f} | "
            f"{ratio:.2f} | {r['seconds_per_batch']:.3f} | {r['peak_rss_mb']:.0f} | {r.get('peak_gpu_mb', float('nan')):.0f} |"
        )
    return rows


def run_chosen(args: argparse.Namespace) -> int:
    """``--config``: each (batch, dtype) case in its own process; a failed case is recorded and the rest still run."""
    reps = args.reps or (2 if args.quick else 5)
    results, failed = [], []
    for d in args.dtypes:
        for b in args.batches:
            try:
                results.append(spawn(args.config, b, d, args.device, reps, source=args.source))
            except RuntimeError as exc:
                failed.append({"config": args.config, "batch": b, "dtype": d, "device": args.device, "error": str(exc)[-2000:]})
                print(f"FAILED: {args.config} b{b} {d} on {args.device}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"reps": reps, "source": args.source, "results": results, "failed": failed}, indent=2))
    if results:
        print("\n".join(table(results)))
    return 1 if failed or not results else 0


def write_section(lines: list[str]) -> None:
    write_section_in(DOCS, SECTION, "\n".join([SECTION, "", *lines]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--config", help="run only this config over --batches x --dtypes (no docs written)")
    ap.add_argument("--device", default="cpu", help="with --config: cpu | cuda")
    ap.add_argument("--source", default="", help="with --config: model.source (random: that size, random weights)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="with --config")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="with --config")
    ap.add_argument("--reps", type=int, help="timed batches per case (default: 2 with --quick, else 5)")
    ap.add_argument("--json", type=Path, help="also write the results (and failed cases) as JSON here")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(*json.loads(args.case))))
        return
    if args.config:
        sys.exit(run_chosen(args))

    import torch

    reps = args.reps or (2 if args.quick else 5)
    cases = [("tiny", 1, "fp32", "cpu"), ("tiny", 8, "fp32", "cpu"), ("tiny", 8, "bf16", "cpu")]
    results = [spawn(c, b, d, dev, reps) for c, b, d, dev in cases]
    if torch.cuda.is_available():
        for b, d in ((1, "bf16"), (4, "bf16"), (4, "fp16")):
            results.append(spawn("trellis", b, d, "cuda", 2 if args.quick else 3, source="random"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    rows = table(results)
    print("\n".join(rows))
    if not args.no_write:
        note = [
            f"`python bench/generator.py` — 12 Euler steps with CFG (as in `configs/tiny.yaml`), one torch thread, "
            f"{os.cpu_count()}-core CPU{' + ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}; "
            "each case in its own process (peak RSS is the whole process). Baseline: batch 1 of the tiny config.",
            "",
            *rows,
            "",
        ]
        if not torch.cuda.is_available():
            note.append("No GPU on this machine: the TRELLIS-L rows (random weights, 12 steps, CFG on) appear when one is present.")
        write_section(note)


if __name__ == "__main__":
    main()
